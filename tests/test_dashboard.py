"""The web dashboard in a real browser: Debian's Chromium driven by Playwright, against a real
pbhost with real sidecars, a real PocketBase and a real superuser, on both of its homes:
PocketBase's port (`/_pm/`, through pbhost's hook; logs polled with a cursor) and pbhost's
control API (`/`; logs streamed).

Screenshots are saved as artifacts in ARTIFACTS (printed at the end of the run). With
PBHOST_README_SCREENSHOTS=DIR, test_screenshot_for_the_readme also writes the README's images
there (docs/images).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    Request,
    expect,
    sync_playwright,
)

from support import ARTIFACTS as ALL_ARTIFACTS
from support import PbhostRun, Project, http_json, pbhost_env, pid_alive, wait_for

PY = sys.executable
EMAIL, PASSWORD = "admin@example.com", "password123"
USER_EMAIL = "someone@example.com"
ARTIFACTS = ALL_ARTIFACTS / "dashboard"
SHOW = 2000  # app.js: lines in the DOM at most

# A sidecar the test talks to with signals: USR1 prints the text of $MSG_FILE on stdout and a
# warning on stderr (only on one of them with a "stdout:" / "stderr:" prefix); USR2 prints
# 50,000 lines as fast as it can.
TALKER = """
    import os, signal, sys, threading
    me = os.environ["PBHOST_PROCESS_ID"]
    def say(*_):
        text = open(os.environ["MSG_FILE"]).read().strip()
        where, _, rest = text.partition(":")
        if where in ("stdout", "stderr"):
            print(rest, file=getattr(sys, where), flush=True)
            return
        print(text, flush=True)
        print(f"warning from {me}: {text}", file=sys.stderr, flush=True)
    def flood(*_):
        sys.stdout.write("".join(f"flood line {i}\\n" for i in range(1, 50_001)))
        sys.stdout.flush()
    signal.signal(signal.SIGUSR1, say)
    signal.signal(signal.SIGUSR2, flood)
    print(f"{me} up, pid={os.getpid()}", flush=True)
    threading.Event().wait()
"""


# -- the browser ---------------------------------------------------------------------------------
def chromium_path() -> str:
    """Debian's chromium (Playwright's own browser download cannot work offline)."""
    named = os.environ.get("PBHOST_CHROMIUM")
    found = named or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not os.access(found, os.X_OK):
        pytest.fail("the dashboard tests need Chromium: `apt-get install -y chromium` (Debian; "
                    "`make test` does it when run as root), or PBHOST_CHROMIUM=/path/to/chromium",
                    pytrace=False)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=chromium_path(),
            args=["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@dataclass
class Session:
    """One browser context (fresh storage) and everything it asked the network for."""

    page: Page
    urls: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


@pytest.fixture
def session(browser: Browser) -> Iterator[Session]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    s = Session(page)

    def seen(req: Request) -> None:
        s.urls.append(req.url)
    page.on("request", seen)
    page.on("pageerror", lambda exc: s.errors.append(str(exc)))

    def console(msg: ConsoleMessage) -> None:
        # A Content-Security-Policy violation means something the page needs is blocked.
        if "Content Security Policy" in msg.text:
            s.errors.append(msg.text)
    page.on("console", console)
    page.set_default_timeout(15_000)
    yield s
    # Every test, whatever it did: no token ever went into a URL, and the page threw nothing.
    assert_no_token_in(s.urls, tokens_of(page))
    context.close()
    assert not s.errors, s.errors


def tokens_of(page: Page) -> list[str]:
    """Every token the page holds (its own sign-in and PocketBase dashboard's)."""
    try:
        stored = page.evaluate("() => Object.values(localStorage)")
    except Exception:
        return []
    found = []
    for value in stored:
        try:
            data = json.loads(value)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("token"), str):
            found.append(data["token"])
    return found


def assert_no_token_in(urls: list[str], tokens: list[str]) -> None:
    for url in urls:
        assert not re.search(r"eyJ[\w-]{10,}\.", url), f"a JWT in a URL: {url}"
        assert "token=" not in url.lower(), f"a token parameter in a URL: {url}"
        for token in tokens:
            assert token not in url, f"a token in a URL: {url}"


# -- pbhost ------------------------------------------------------------------------------------
@dataclass
class Stack:
    run: PbhostRun
    api: str          # the control API's base URL
    token: str        # pbhost's own token (control.json)
    su: str           # a superuser's token, for the test's own checks

    @property
    def pb(self) -> str:
        return self.run.url

    def base(self, port: str) -> str:
        return self.pb + "/_pm/" if port == "pb" else self.api + "/"

    def procs(self) -> dict[str, dict[str, Any]]:
        status, body = http_json(self.api + "/api/pm/list", token=self.token)
        assert status == 200, body
        return {p["id"]: p for p in body}

    def proc(self, proc_id: str) -> dict[str, Any]:
        return self.procs()[proc_id]

    def say(self, proc_id: str, text: str) -> None:
        (self.run.root / f"{proc_id}.msg").write_text(text)
        os.kill(self.proc(proc_id)["pid"], signal.SIGUSR1)


def pbhost_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pbhost", *args], cwd=root, env=pbhost_env(),
                          capture_output=True, text=True, timeout=60)


def talker(project: Project, proc_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": proc_id, "script": "talker.py", "interpreter": PY,
            "env": {"MSG_FILE": str(project.root / f"{proc_id}.msg")}, **extra}


def start_stack(project: Project, processes: list[dict[str, Any]]) -> Stack:
    # The superuser comes first, as a user would do it: `pbhost pocketbase superuser upsert`.
    made = pbhost_cli(project.root, "pocketbase", "superuser", "upsert", EMAIL, PASSWORD)
    assert made.returncode == 0, made.stderr
    project.write("talker.py", TALKER)
    project.config(processes)
    run = project.serve()
    run.wait_line("PocketBase hook answers", timeout=20)
    info = wait_for(lambda: json.loads((run.data_dir / ".pbhost/control.json").read_text()),
                    15, "control.json")
    status, body = http_json(run.url + "/api/collections/_superusers/auth-with-password", "POST",
                             body={"identity": EMAIL, "password": PASSWORD})
    assert status == 200, body
    return Stack(run, info["url"], info["token"], body["token"])


@pytest.fixture
def stack(project: Project) -> Stack:
    stack = start_stack(project, [
        talker(project, "ai-agent", devMode=True, watchPaths=["talker.py"]),
        talker(project, "worker"),
        {"id": "mailer", "command": "sh", "args": ["-c", "echo 'smtp: connection refused' >&2; "
                                                         "exit 3"], "maxRetries": 1},
        {"id": "reports", "command": "sh", "args": ["-c", "sleep 600"], "autostart": False},
    ])
    wait_for(lambda: stack.proc("mailer")["status"] == "crashed", 20, "mailer crashed")
    wait_for(lambda: stack.proc("worker")["status"] == "running", 20, "worker running")
    return stack


# -- the page ------------------------------------------------------------------------------------
def sign_in(page: Page, base: str, email: str = EMAIL, password: str = PASSWORD) -> None:
    page.goto(base)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Login").click()


def open_signed_in(s: Session, stack: Stack, port: str) -> Page:
    sign_in(s.page, stack.base(port))
    expect(s.page.locator("#procs-body tr[data-id]")).to_have_count(5)
    return s.page


def cell(page: Page, proc_id: str, col: str) -> Locator:
    return page.locator(f'#procs-body tr[data-id="{proc_id}"] td[data-col="{col}"]')


def button(page: Page, proc_id: str, action: str) -> Locator:
    return page.locator(f'#procs-body tr[data-id="{proc_id}"] button[data-action="{action}"]')


def open_log(page: Page, proc_id: str | None) -> Locator:
    if proc_id is None:
        page.get_by_role("link", name="Logs", exact=True).click()
    else:
        page.locator(f'#proc-nav a[data-id="{proc_id}"]').click()
    expect(page.locator("#log-state")).to_have_text("live")
    return page.locator("#log")


def reloads(page: Page) -> int:
    """How many times the page was loaded: a marker set once survives only without a reload."""
    return int(page.evaluate("() => (window.__loads = (window.__loads || 0) + 1)"))


# -- tests: sign-in ------------------------------------------------------------------------------
@pytest.mark.parametrize("port", ["pb", "api"])
def test_a_superuser_signs_in_and_sees_every_process(session: Session, stack: Stack,
                                                     port: str) -> None:
    page = session.page
    page.goto(stack.base(port))
    expect(page.get_by_role("heading", name="Superuser login")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    sign_in(page, stack.base(port))
    rows = page.locator("#procs-body tr[data-id]")
    expect(rows).to_have_count(5)
    # PocketBase first, then the sidecars in the config's order, each with the API's status.
    assert [r.get_attribute("data-id") for r in rows.all()] == [
        "pocketbase", "ai-agent", "worker", "mailer", "reports"]
    procs = stack.procs()
    for proc_id, want in (("pocketbase", "running"), ("ai-agent", "running"),
                          ("worker", "running"), ("mailer", "crashed"), ("reports", "stopped")):
        assert procs[proc_id]["status"] == want
        expect(cell(page, proc_id, "status")).to_have_text(want)
        pid = procs[proc_id]["pid"]
        expect(cell(page, proc_id, "pid")).to_have_text(str(pid) if pid else "-")
    expect(cell(page, "mailer", "error")).to_contain_text("exited with code 3")
    expect(cell(page, "ai-agent", "id")).to_contain_text("dev")
    expect(cell(page, "pocketbase", "memory")).to_contain_text("MiB")
    expect(page.locator("#who")).to_have_text(EMAIL)
    session.shot(f"signed-in-{port}")
    # Signed in for good: a reload shows the table at once, signing out shows the form again.
    page.reload()
    expect(page.locator("#procs-body tr[data-id]")).to_have_count(5)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Superuser login")).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", name="Superuser login")).to_be_visible()


def test_signed_in_to_pocketbase_dashboard_means_signed_in_here(session: Session,
                                                                stack: Stack) -> None:
    page = session.page
    page.goto(stack.pb + "/_/")
    page.locator("#login_identity").fill(EMAIL)
    page.locator("#login_pass").fill(PASSWORD)
    page.get_by_role("button", name="Login").click()
    expect(page.get_by_text("Collections").first).to_be_visible()
    page.goto(stack.base("pb"))
    expect(page.locator("#procs-body tr[data-id]")).to_have_count(5)  # no form in between
    expect(page.locator("#who")).to_have_text(EMAIL)


def make_user(stack: Stack) -> str:
    """A regular (`users` collection) account; returns its token."""
    status, body = http_json(stack.pb + "/api/collections/users/records", "POST", stack.su,
                             {"email": USER_EMAIL, "password": PASSWORD,
                              "passwordConfirm": PASSWORD})
    assert status == 200, body
    status, body = http_json(stack.pb + "/api/collections/users/auth-with-password", "POST",
                             body={"identity": USER_EMAIL, "password": PASSWORD})
    assert status == 200, body
    return str(body["token"])


@pytest.mark.parametrize("port", ["pb", "api"])
def test_a_wrong_password_and_a_regular_user_are_refused(session: Session, stack: Stack,
                                                        port: str) -> None:
    page = session.page
    user_token = make_user(stack)
    error = page.locator("#signin-error")
    sign_in(page, stack.base(port), password="wrong-password")
    expect(error).to_contain_text("Wrong email or password")
    sign_in(page, stack.base(port), email=USER_EMAIL)  # right password, but not a superuser
    expect(error).to_contain_text("Wrong email or password, or not a superuser")
    expect(page.locator("#app")).to_be_hidden()
    session.shot(f"refused-{port}")
    if port == "api":
        # pbhost's token field refuses a regular user's token too...
        page.get_by_text("Use pbhost's token instead").click()
        page.get_by_label("Token").fill(user_token)
        page.get_by_role("button", name="Use token").click()
        expect(page.locator("#token-error")).to_contain_text("does not accept")
        expect(page.locator("#app")).to_be_hidden()
        # ... and takes pbhost's own.
        page.get_by_label("Token").fill(stack.token)
        page.get_by_role("button", name="Use token").click()
        expect(page.locator("#procs-body tr[data-id]")).to_have_count(5)
        expect(page.locator("#who")).to_have_text("pbhost token")
    else:
        # A regular user's sign-in in PocketBase's dashboard storage is not taken either.
        page.evaluate("""([t, e]) => localStorage.setItem('__pb_superusers__/_', JSON.stringify(
            {token: t, record: {email: e, collectionName: 'users'}}))""", [user_token, USER_EMAIL])
        page.reload()
        expect(page.get_by_role("heading", name="Superuser login")).to_be_visible()
        # Nor a users token dressed as a superuser's: PocketBase answers 403, the form stays.
        page.evaluate("""([t, e]) => localStorage.setItem('__pb_superusers__/_', JSON.stringify(
            {token: t, record: {email: e, collectionName: '_superusers'}}))""",
                      [user_token, USER_EMAIL])
        page.reload()
        expect(page.get_by_role("heading", name="Superuser login")).to_be_visible()
        expect(page.locator("#app")).to_be_hidden()


# -- tests: live table and buttons -------------------------------------------------------------
def test_a_sidecar_killed_from_outside_shows_restarted_without_a_reload(session: Session,
                                                                        stack: Stack) -> None:
    page = open_signed_in(session, stack, "pb")
    before = stack.proc("worker")
    expect(cell(page, "worker", "pid")).to_have_text(str(before["pid"]))
    loads = reloads(page)
    os.kill(before["pid"], signal.SIGKILL)
    expect(cell(page, "worker", "restarts")).to_have_text(str(before["restartCount"] + 1),
                                                          timeout=20_000)
    expect(cell(page, "worker", "status")).to_have_text("running", timeout=20_000)
    after = stack.proc("worker")
    assert after["pid"] != before["pid"] and pid_alive(after["pid"])
    expect(cell(page, "worker", "pid")).to_have_text(str(after["pid"]))
    assert reloads(page) == loads + 1  # the same page all along
    session.shot("killed-and-restarted")


@pytest.mark.parametrize("port", ["pb", "api"])
def test_restart_gives_a_new_pid_and_stop_then_start_bring_it_back(session: Session,
                                                                   stack: Stack,
                                                                   port: str) -> None:
    page = open_signed_in(session, stack, port)
    old = stack.proc("worker")["pid"]
    button(page, "worker", "restart").click()
    expect(page.locator("#toasts")).to_contain_text("worker restarted (pid ")
    new = stack.proc("worker")["pid"]
    assert new != old and pid_alive(new) and not pid_alive(old)
    expect(cell(page, "worker", "pid")).to_have_text(str(new))

    button(page, "worker", "stop").click()
    expect(cell(page, "worker", "status")).to_have_text("stopped")
    expect(cell(page, "worker", "pid")).to_have_text("-")
    assert not pid_alive(new)
    # It stays stopped: two more refreshes of the table later, still stopped.
    for _ in range(2):
        stamp = page.locator("#updated").inner_text()
        expect(page.locator("#updated")).not_to_have_text(stamp, timeout=10_000)
    expect(cell(page, "worker", "status")).to_have_text("stopped")
    assert stack.proc("worker")["status"] == "stopped"
    session.shot(f"stopped-{port}")

    button(page, "worker", "start").click()
    expect(cell(page, "worker", "status")).to_have_text("running")
    again = stack.proc("worker")["pid"]
    assert again and again != new and pid_alive(again)
    expect(cell(page, "worker", "pid")).to_have_text(str(again))
    # One that never started (autostart: false) starts from its own page too.
    page.locator('#proc-nav a[data-id="reports"]').click()
    page.locator('#detail-actions button[data-action="start"]').click()
    expect(page.locator("#facts")).to_contain_text("running")
    assert pid_alive(stack.proc("reports")["pid"])


@pytest.mark.parametrize("port", ["pb", "api"])
def test_restarting_pocketbase_asks_first_and_the_page_lives_on(session: Session, stack: Stack,
                                                                port: str) -> None:
    page = open_signed_in(session, stack, port)
    old = stack.proc("pocketbase")["pid"]
    button(page, "pocketbase", "restart").click()
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Restart PocketBase?")
    expect(dialog).to_contain_text("Restarting PocketBase interrupts every request it serves.")
    session.shot(f"confirm-{port}")
    page.keyboard.press("Escape")  # cancel: nothing happens
    expect(dialog).to_be_hidden()
    expect(button(page, "pocketbase", "restart")).to_be_focused()  # back where it was
    assert stack.proc("pocketbase")["pid"] == old

    button(page, "pocketbase", "restart").click()
    page.locator("#confirm-ok").click()
    wait_for(lambda: (p := stack.proc("pocketbase"))["pid"] not in (None, old)
             and p["status"] == "running", 20, "PocketBase restarted")
    stack.run.wait_healthy()
    new = stack.proc("pocketbase")["pid"]
    # The page keeps going (through PocketBase it lost its connection for a moment).
    expect(cell(page, "pocketbase", "pid")).to_have_text(str(new), timeout=20_000)
    expect(page.locator("#banner")).to_be_hidden(timeout=20_000)
    stack.say("worker", "after the PocketBase restart")
    open_log(page, "worker")
    expect(page.locator("#log .ln", has_text="after the PocketBase restart").first).to_be_visible()


def test_stopping_pocketbase_from_its_own_port_is_survivable(session: Session,
                                                             stack: Stack) -> None:
    page = open_signed_in(session, stack, "pb")
    button(page, "pocketbase", "stop").click()
    expect(page.locator("#confirm")).to_contain_text("loses its connection")
    page.locator("#confirm-ok").click()
    wait_for(lambda: stack.proc("pocketbase")["status"] == "stopped", 20, "PocketBase stopped")
    banner = page.locator("#banner")
    expect(banner).to_contain_text("PocketBase does not answer", timeout=20_000)
    expect(banner).to_contain_text("pbhost start pocketbase")
    session.shot("pocketbase-stopped")
    # Started again from elsewhere (the CLI), the same page picks up where it was.
    started = pbhost_cli(stack.run.root, "start", "pocketbase")
    assert started.returncode == 0, started.stderr
    stack.run.wait_healthy()
    expect(banner).to_be_hidden(timeout=20_000)
    expect(cell(page, "pocketbase", "status")).to_have_text("running")
    assert page.locator("#app").is_visible()


def test_a_superuser_stops_pocketbase_on_the_control_api_and_starts_it_again(
        session: Session, stack: Stack) -> None:
    """The control API checks a superuser's token with PocketBase; while PocketBase is stopped,
    a token it confirmed recently still passes (test_api.py checks that past the verdict
    cache), so the page that stopped it can start it again."""
    page = open_signed_in(session, stack, "api")
    button(page, "pocketbase", "stop").click()
    expect(page.locator("#confirm")).to_contain_text("Stop PocketBase?")
    page.locator("#confirm-ok").click()
    expect(cell(page, "pocketbase", "status")).to_have_text("stopped")
    expect(page.locator("#banner")).to_be_hidden()
    button(page, "pocketbase", "start").click()
    expect(cell(page, "pocketbase", "status")).to_have_text("running", timeout=20_000)
    stack.run.wait_healthy()


@pytest.mark.parametrize("port", ["pb", "api"])
def test_reload_config_applies_an_edit_and_a_broken_file_changes_nothing(
        session: Session, project: Project, port: str) -> None:
    # No devMode here: a save would reload by itself, before the button is pressed.
    stack = start_stack(project, [talker(project, "worker"), talker(project, "other")])
    page = session.page
    sign_in(page, stack.base(port))
    expect(page.locator("#procs-body tr[data-id]")).to_have_count(3)
    worker, other = stack.proc("worker")["pid"], stack.proc("other")["pid"]
    changed = talker(project, "worker")
    changed["env"]["MODE"] = "fast"
    project.config([changed, talker(project, "other"), talker(project, "extra")])

    page.get_by_role("button", name="Reload config").click()
    dialog = page.locator("#confirm")
    expect(dialog).to_contain_text("Reload the process file?")
    page.keyboard.press("Escape")  # cancel: nothing is reloaded
    expect(dialog).to_be_hidden()
    assert "extra" not in stack.procs()
    page.get_by_role("button", name="Reload config").click()
    page.locator("#confirm-ok").click()
    expect(page.locator("#toasts")).to_contain_text(
        "Reloaded: added extra; restarted worker; 1 unchanged")
    expect(page.locator("#procs-body tr[data-id]")).to_have_count(4)
    expect(cell(page, "extra", "status")).to_have_text("running")
    procs = stack.procs()
    assert procs["other"]["pid"] == other and procs["worker"]["pid"] != worker
    expect(cell(page, "worker", "pid")).to_have_text(str(procs["worker"]["pid"]))

    (project.root / "pb_processes.json").write_text('[{"id": "worker", "script": ')
    page.get_by_role("button", name="Reload config").click()
    page.locator("#confirm-ok").click()
    errors = page.locator("#reload-errors")
    expect(errors).to_contain_text("has errors; nothing was changed")
    expect(errors.locator("li")).not_to_have_count(0)
    expect(errors.locator("li").first).to_contain_text("JSON syntax error at line 1, column 29")
    session.shot(f"reload-errors-{port}")
    assert {k: p["pid"] for k, p in stack.procs().items() if k != "pocketbase"} == {
        "worker": procs["worker"]["pid"], "other": other, "extra": procs["extra"]["pid"]}
    expect(page.get_by_role("button", name="Reload config")).to_be_enabled()
    page.get_by_role("button", name="Dismiss").click()
    expect(errors).to_be_hidden()


@pytest.mark.parametrize("port", ["pb", "api"])
def test_the_live_log_goes_on_after_pbhost_itself_restarts(session: Session, project: Project,
                                                          port: str) -> None:
    """The page keeps its cursor across pbhost's restart; the new run numbers its lines from 1
    again, and they must still show."""
    stack = start_stack(project, [talker(project, "worker")])
    page = session.page
    sign_in(page, stack.base(port))
    log = open_log(page, "worker")
    for i in range(3):
        stack.say("worker", f"stdout:before restart {i}")
        expect(log.locator(".ln", has_text=f"before restart {i}")).to_have_count(1)
    stack.run.stop()
    run = project.serve(port=stack.run.port)  # the same ports: the page's origin answers again
    control = run.data_dir / ".pbhost/control.json"
    info = wait_for(lambda: (d := json.loads(control.read_text()))["pid"] == run.proc.pid and d,
                    15, "the new run's control.json")
    assert info["url"] == stack.api
    new = Stack(run, info["url"], info["token"], stack.su)
    run.wait_line("[worker][STDOUT] worker up")
    new.say("worker", "stdout:after restart")
    expect(log.locator(".ln", has_text="after restart").last).to_be_visible(timeout=20_000)
    expect(log.locator(".ln", has_text="pbhost was restarted")).to_have_count(1)
    expect(log.locator(".ln", has_text="before restart 2")).to_have_count(1)  # not lost
    assert log.locator(".ln", has_text="after restart").count() == 1


# -- tests: logs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("port", ["pb", "api"])
def test_a_printed_line_appears_in_its_live_log_within_2s(session: Session, stack: Stack,
                                                          port: str) -> None:
    page = open_signed_in(session, stack, port)
    log = open_log(page, "ai-agent")
    # The scroll-back: the ring's lines are there from the start.
    expect(log.locator(".ln", has_text="ai-agent up, pid=")).to_have_count(1)
    for n in range(3):
        marker = f"hello {port} {n} {time.monotonic_ns()}"
        start = time.monotonic()
        stack.say("ai-agent", marker)
        line = log.locator(".ln", has_text=marker)
        expect(line.first).to_be_visible(timeout=2_000)  # the bound
        elapsed = time.monotonic() - start
        assert elapsed < 2.0, elapsed
        expect(line).to_have_count(2)  # stdout and stderr, each exactly once
        expect(log.locator(".ln.err", has_text="warning from ai-agent: " + marker)).to_have_count(1)
        expect(log.locator(".ln:not(.err)", has_text=marker)).to_have_count(1)
    # Other processes' lines stay out of this view; the merged view has them all.
    stack.say("worker", "only in the merged view")
    log = open_log(page, None)
    expect(log.locator(".ln", has_text="only in the merged view")).to_have_count(2)
    expect(log.locator(".ln .src", has_text="worker").first).to_be_visible()
    expect(log.locator(".ln", has_text="smtp: connection refused").first).to_be_visible()
    session.shot(f"logs-{port}")


def test_search_filter_and_pause(session: Session, stack: Stack) -> None:
    page = open_signed_in(session, stack, "api")
    log = open_log(page, "ai-agent")
    for text in ("apple pie", "banana split"):  # one at a time: a line per signal
        stack.say("ai-agent", text)
        expect(log.locator(".ln", has_text=text)).to_have_count(2)
    page.get_by_label("Filter lines").fill("APPLE")
    expect(log.locator(".ln", has_text="banana")).to_have_count(0)
    expect(log.locator(".ln", has_text="apple pie")).to_have_count(2)
    expect(log.locator("mark", has_text="apple").first).to_be_visible()
    page.get_by_label("Streams").select_option("stderr")
    expect(log.locator(".ln")).to_have_count(1)
    expect(log.locator(".ln.err")).to_have_count(1)
    page.get_by_label("Streams").select_option("")
    page.get_by_label("Filter lines").fill("")
    expect(log.locator(".ln", has_text="banana split")).to_have_count(2)

    pause = page.get_by_role("button", name="Pause")
    pause.click()
    expect(page.get_by_role("button", name="Resume")).to_have_attribute("aria-pressed", "true")
    stack.say("ai-agent", "while paused")
    expect(page.locator("#log-state")).to_contain_text("2 new lines")
    expect(log.locator(".ln", has_text="while paused")).to_have_count(0)
    page.get_by_role("button", name="Resume").click()
    expect(log.locator(".ln", has_text="while paused")).to_have_count(2)
    # Keyboard: "/" jumps to the filter; the buttons are reachable and labelled.
    page.locator("#log").focus()
    page.keyboard.press("/")
    expect(page.get_by_label("Filter lines")).to_be_focused()


@pytest.mark.parametrize("port", ["pb", "api"])
def test_a_flood_of_50000_lines_does_not_hang_the_page(session: Session, stack: Stack,
                                                       port: str) -> None:
    page = open_signed_in(session, stack, port)
    log = open_log(page, "ai-agent")
    os.kill(stack.proc("ai-agent")["pid"], signal.SIGUSR2)
    expect(log.locator(".ln", has_text="flood line").first).to_be_visible(timeout=20_000)
    # While the lines pour in, the page answers a click at once...
    page.get_by_role("button", name="Pause").click(timeout=5_000)
    expect(page.get_by_role("button", name="Resume")).to_have_attribute(
        "aria-pressed", "true", timeout=5_000)
    page.get_by_role("button", name="Resume").click(timeout=5_000)
    expect(page.get_by_role("button", name="Pause")).to_be_visible(timeout=5_000)
    # ... navigates ...
    page.locator("#nav-processes").click(timeout=5_000)
    expect(page.locator("#view-overview")).to_be_visible(timeout=5_000)
    log = open_log(page, "ai-agent")
    # ... and keeps following: a line printed after the flood shows up, and the DOM is capped.
    expect(log.locator(".ln", has_text="flood line 50000").first).to_be_attached(timeout=30_000)
    stack.say("ai-agent", "after the flood")
    expect(log.locator(".ln", has_text="after the flood")).to_have_count(2, timeout=20_000)
    assert log.locator(".ln").count() <= SHOW
    session.shot(f"flood-{port}")


def test_phone_width_and_the_keyboard(browser: Browser, stack: Stack) -> None:
    """At 390 px the table becomes cards and nothing runs off the side; the buttons are real
    buttons, so Enter works them."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    try:
        sign_in(page, stack.base("pb"))
        expect(page.locator("#procs-body tr[data-id]")).to_have_count(5)
        expect(page.locator("#procs thead")).to_be_hidden()
        assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth + 1")
        restart = button(page, "worker", "restart")
        restart.scroll_into_view_if_needed()
        box = restart.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        old = stack.proc("worker")["pid"]
        restart.focus()
        # The table is drawn anew every second: the focus must stay on this button across it.
        updated = page.locator("#updated").inner_text()
        expect(page.locator("#updated")).not_to_have_text(updated)
        assert page.evaluate("""() => [document.activeElement.dataset.action,
            document.activeElement.closest('tr').dataset.id]""") == ["restart", "worker"]
        page.keyboard.press("Enter")
        expect(page.locator("#toasts")).to_contain_text("worker restarted")
        assert stack.proc("worker")["pid"] != old
        # The button was busy and the row redrawn meanwhile: the focus is still where it was,
        # and once Stop has turned into Start, it is on Start.
        expect(restart).to_be_focused()
        button(page, "worker", "stop").focus()
        page.keyboard.press("Enter")
        expect(cell(page, "worker", "status")).to_have_text("stopped")
        expect(button(page, "worker", "start")).to_be_focused()
        page.keyboard.press("Enter")
        expect(cell(page, "worker", "status")).to_have_text("running")
        expect(button(page, "worker", "stop")).to_be_focused()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "phone.png"))
        open_log(page, "ai-agent")
        assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth + 1")
        page.screenshot(path=str(ARTIFACTS / "phone-log.png"))
    finally:
        context.close()


def test_no_token_appears_in_any_url(session: Session, stack: Stack) -> None:
    """A whole visit on both ports; the session fixture checks every URL once more."""
    page = session.page
    for port in ("pb", "api"):
        page = open_signed_in(session, stack, port)
        open_log(page, "worker")
        open_log(page, None)
        page.locator("#nav-processes").click()
        button(page, "worker", "restart").click()
        expect(page.locator("#toasts")).to_contain_text("worker restarted")
        assert_no_token_in([page.url], [stack.su, stack.token, *tokens_of(page)])
    # A hand-typed address that is not valid percent-encoding: shown as typed, nothing thrown
    # (the session fixture fails on a page error).
    page.evaluate("() => { location.hash = '#/p/%'; }")
    expect(page.locator("#logs-title")).to_contain_text("%")
    tokens = [stack.su, stack.token, *tokens_of(page)]
    assert len(tokens) >= 3
    assert any("/api/pm/" in url for url in session.urls)
    assert_no_token_in(session.urls, tokens)


# -- the README's picture ------------------------------------------------------------------------
def test_screenshot_for_the_readme(browser: Browser, stack: Stack) -> None:
    """The table (light) and a live log (dark), on PocketBase's port; copied to
    PBHOST_README_SCREENSHOTS (docs/images) when that is set."""
    target = os.environ.get("PBHOST_README_SCREENSHOTS")
    worker = stack.proc("worker")
    os.kill(worker["pid"], signal.SIGKILL)  # one restart, as a real day would have
    wait_for(lambda: (p := stack.proc("worker"))["restartCount"] == 1
             and p["status"] == "running", 20, "worker restarted")
    for text in ("stdout:loaded 3 tools, model gpt-4o-mini", "stdout:GET /chat 200 in 118 ms",
                 "stderr:rate limited by the provider, retrying in 2 s",
                 "stdout:GET /chat 200 in 96 ms"):
        stack.say("ai-agent", text)
        line = text.split(":", 1)[1]
        stack.run.wait_line(line)
    shots: list[Path] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    views: tuple[tuple[Literal["light", "dark"], str | None, int], ...] = (
        ("light", None, 520), ("dark", "ai-agent", 640))
    for scheme, view, height in views:
        context = browser.new_context(viewport={"width": 1280, "height": height},
                                      color_scheme=scheme)
        page = context.new_page()
        sign_in(page, stack.base("pb"))
        expect(page.locator("#procs-body tr[data-id]")).to_have_count(5)
        expect(cell(page, "worker", "restarts")).to_have_text("1")
        if view:
            log = open_log(page, view)
            expect(log.locator(".ln", has_text="GET /chat 200 in 96 ms")).to_have_count(1)
        page.mouse.move(640, height - 1)  # no hover highlight in the picture
        path = ARTIFACTS / f"readme-{scheme}.png"
        page.screenshot(path=str(path))
        shots.append(path)
        context.close()
    assert all(p.stat().st_size > 10_000 for p in shots)
    if target:
        out = Path(target)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shots[0], out / "dashboard.png")
        shutil.copyfile(shots[1], out / "dashboard-logs-dark.png")
