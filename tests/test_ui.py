"""The Prefect UI in a real browser (headless Chromium through Playwright): `prefect server
start` on 127.0.0.1, the work pools, `prefect --no-prompt deploy --all`, a process worker; then,
as a user would, the `mshep-demo/demo` deployment's custom-run form (the deployment's parameters
as form fields with their defaults), the `mshep/gsm8k` form (serving.base_url, M, N; never
submitted), a demo run started from the form with N=2, and that run's subflow, artifacts, label
table and report. What the pages show is checked against the API and the files written.

Screenshots of every step go to the test's tmp_path (their paths are printed: `pytest -s`).
Needs Debian's chromium (`apt-get install -y chromium`) and the playwright package
(`pip install playwright`; its own browser download is not used); skipped without them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.prefect_stack import deploy_all, prefect_server, worker

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Locator, Page

CHROMIUM = os.environ.get("MSHEP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TIMEOUT_MS = 60_000  # every wait on the page: the UI polls the API, a cold page takes seconds

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="playwright is not installed (pip install playwright)",
    ),
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason=f"no chromium at {CHROMIUM} (apt-get install -y chromium)",
    ),
]


@dataclass
class Stack:
    """A Prefect server with the deployments of deployments/prefect.yaml and a worker."""

    env: dict[str, str]
    base: str  # http://127.0.0.1:<port>
    api: str  # <base>/api
    deployments: dict[str, dict[str, Any]]  # "mshep-demo/demo" -> the API's deployment
    worker_log: Path

    def get(self, path: str) -> Any:
        import httpx

        response = httpx.get(f"{self.api}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        import httpx

        response = httpx.post(f"{self.api}{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`prefect server start` on 127.0.0.1 (own home, SQLite, the UI's API URL set to it), the
    three process pools, `prefect --no-prompt deploy --all`, and a worker on mshep-cpu."""
    import httpx

    home = tmp_path_factory.mktemp("prefect-home")
    with prefect_server(home, ui=True) as env:
        base = env["PREFECT_API_URL"].removesuffix("/api")
        deploy_all(env)
        deployments = {
            name: httpx.get(f"{base}/api/deployments/name/{name}", timeout=10).json()
            for name in ("mshep-demo/demo", "mshep/gsm8k")
        }
        with worker(env, tmp_path_factory.mktemp("worker")) as worker_log:
            yield Stack(env, base, f"{base}/api", deployments, worker_log)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """Debian's headless chromium with a fresh profile; requests off 127.0.0.1 are refused
    (the V2 UI asks amplitude.com for a configuration) and listed in `context.blocked`."""
    from playwright.sync_api import Route, expect, sync_playwright

    blocked: list[str] = []

    def local_only(route: Route) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    with (
        tempfile.TemporaryDirectory(prefix="mshep-chromium-") as profile,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        context.route("**/*", local_only)
        try:
            yield context
        finally:
            context.close()
            hosts = sorted({re.sub(r"^\w+://([^/]+).*", r"\1", url) for url in blocked})
            print(f"requests refused (not 127.0.0.1): {len(blocked)} to {hosts}")


@dataclass
class Shots:
    """Numbered screenshots under tmp_path/screenshots, of the viewport, the whole page or one
    element; each path is printed."""

    folder: Path
    taken: list[Path] = field(default_factory=list)

    def _next(self, name: str) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        self.taken.append(path)
        print(f"screenshot: {path}")
        return path

    def __call__(self, page: Page, name: str, *, full_page: bool = False) -> None:
        page.screenshot(path=self._next(name), full_page=full_page)

    def element(self, element: Locator, name: str) -> None:
        element.screenshot(path=self._next(name))


# The parameter forms of both UIs: each property is a block holding its <label> ("M (Optional)")
# and, in a <fieldset>, its control or the nested properties of a section.
def prop(scope: Page | Locator, label: str) -> Locator:
    """The form block of the property labelled `label` (with or without " (Optional)")."""
    text = f"normalize-space()='{label}' or normalize-space()='{label} (Optional)'"
    return scope.locator(f"xpath=.//label[{text}]/ancestor::div[.//fieldset][1]").first


def control(form: Page | Locator, section: str, name: str) -> Locator:
    """The input (number) or textarea (text) of `section.name` in a parameter form."""
    return prop(prop(form, section), name).locator("input, textarea").first


def open_custom_run(page: Page, stack: Stack, name: str) -> Locator:
    """From the Deployments page: the deployment, then Run → Custom run; the form."""
    from playwright.sync_api import expect

    deployment_id = stack.deployments[name]["id"]
    page.get_by_role("link", name="Deployments", exact=True).first.click()
    page.wait_for_url(re.compile(r"/deployments/?(\?.*)?$"))
    page.locator(f"a[href$='/deployments/deployment/{deployment_id}']").first.click()
    page.wait_for_url(f"**/deployments/deployment/{deployment_id}**")
    expect(page.get_by_text(stack.deployments[name]["entrypoint"])).to_be_visible()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Custom run").click()
    page.wait_for_url(f"**/deployments/deployment/{deployment_id}/run**")
    expect(page.get_by_role("heading", name="Parameters")).to_be_visible()
    return page.locator("form").first


def wait_for_run(stack: Stack, flow_run_id: str, timeout: float = 240) -> dict[str, Any]:
    """The flow run, once final; fails with the worker's log unless it Completed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = stack.get(f"/flow_runs/{flow_run_id}")
        if run["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            break
        time.sleep(2)
    assert run["state_type"] == "COMPLETED", (run["state"], stack.worker_log.read_text()[-4000:])
    return dict(run)


def test_the_ui_shows_the_deployments_as_forms_and_runs_the_demo_from_one(
    stack: Stack, browser: BrowserContext, tmp_path: Path
) -> None:
    import httpx
    from playwright.sync_api import expect

    shot = Shots(tmp_path / "screenshots")
    shot.folder.mkdir()
    page = browser.pages[0] if browser.pages else browser.new_page()
    base, api = stack.base, stack.api
    ui_settings = httpx.get(f"{base}/ui-settings", timeout=10).json()
    assert ui_settings["api_url"] == api, ui_settings  # the browser talks to this server

    # 1. The UI's entry point (the V2 UI in Prefect 3.9), the deployments list.
    page.goto(f"{base}/")
    page.wait_for_url("**/v2/**")
    page.get_by_role("link", name="Deployments", exact=True).first.click()
    for name in ("demo", "gsm8k", "gsm8k-ray", "gsm8k-vllm"):
        expect(page.get_by_role("link", name=name, exact=True).first).to_be_visible()
    shot(page, "deployments")

    # 2. The demo's custom-run form: every section a form, the deployment's values as defaults.
    form = open_custom_run(page, stack, "mshep-demo/demo")
    demo_defaults = {
        ("dataset", "Source"): "bundled:gsm8k-test-200",
        ("dataset", "Limit"): "50",
        ("generator", "Model"): "simulated-generator",
        ("generator", "M"): "4",
        ("completer", "Model"): "simulated-completer",
        ("completer", "N"): "4",
        ("output", "Path"): "mshep-output/demo",
        ("execution", "Shard Size"): "25",  # the demo flow's own default
    }
    for (section, name), value in demo_defaults.items():
        expect(control(form, section, name), f"{section}.{name}").to_have_value(value)
    for section in ("golden", "serving"):  # the demo has neither (the simulator is both)
        expect(prop(form, section)).to_have_count(0)
    expect(form.locator(".cm-editor")).to_have_count(0)  # no section left as a raw JSON box
    shot(page, "demo-form", full_page=True)

    # 3. N=2, 8 questions, output in tmp_path; submitted from the form.
    output = tmp_path / "out"
    control(form, "completer", "N").fill("2")
    control(form, "dataset", "Limit").fill("8")
    control(form, "output", "Path").fill(str(output))
    expect(control(form, "completer", "N")).to_have_value("2")
    shot.element(prop(form, "completer"), "demo-form-completer-filled")
    with page.expect_response(
        lambda r: r.url.endswith("/create_flow_run") and r.request.method == "POST"
    ) as created:
        page.get_by_role("button", name="Submit").click()
    assert created.value.ok, created.value.text()
    flow_run_id = created.value.json()["id"]
    sent = json.loads(created.value.request.post_data or "{}")["parameters"]  # what the form sent
    assert sent["completer"]["N"] == 2 and sent["dataset"]["limit"] == 8
    assert sent["generator"]["model"] == "simulated-generator"
    expect(page.get_by_text(re.compile(r"scheduled to start"))).to_be_visible()
    view_run = page.locator(f"a[href$='/runs/flow-run/{flow_run_id}']", has_text="View run")
    expect(view_run).to_be_visible()  # the toast's link to the run just created
    page.wait_for_timeout(500)  # the toast slides in
    shot(page, "demo-submitted")
    page.mouse.move(0, 0)  # off the toast (under the Submit button), which pauses it on hover
    expect(view_run).to_be_hidden(timeout=20_000)  # gone before the next screenshots

    # 4. While it runs: the gsm8k form (serving.base_url and the recipe's M, N), not submitted,
    #    in the V2 UI and in the V1 UI (still served, "Switch to V1 UI").
    gsm8k_defaults = {
        ("serving", "Base Url"): "http://127.0.0.1:8000/v1",
        ("serving", "Endpoint Limit"): "64",
        ("serving", "Concurrency"): "64",
        ("generator", "Model"): "meta-llama/Llama-3.1-8B-Instruct",
        ("generator", "M"): "4",
        ("completer", "N"): "4",
        ("dataset", "Source"): "openai/gsm8k",
        ("dataset", "Limit"): "50",
    }
    form = open_custom_run(page, stack, "mshep/gsm8k")
    for (section, name), value in gsm8k_defaults.items():
        expect(control(form, section, name), f"{section}.{name}").to_have_value(value)
    expect(form.locator(".cm-editor")).to_have_count(0)
    shot.element(prop(form, "serving"), "gsm8k-form-serving")
    v1_page = f"{base}/deployments/deployment/{stack.deployments['mshep/gsm8k']['id']}"
    page.goto(v1_page)
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).first.click()
    page.wait_for_url(f"{v1_page}/run**")
    form = page.locator("form").first
    for (section, name), value in gsm8k_defaults.items():
        expect(control(form, section, name), f"V1 {section}.{name}").to_have_value(value)
    # V1 scrolls inside its own container, which an element screenshot does not follow.
    prop(form, "serving").evaluate("element => element.scrollIntoView({block: 'start'})")
    shot(page, "gsm8k-form-serving-v1")

    # 5. The run completes (the API), then its page in the UI.
    run = wait_for_run(stack, flow_run_id)
    page.goto(f"{base}/v2/runs/flow-run/{flow_run_id}")
    expect(page.get_by_text("Completed").first).to_be_visible()
    expect(page.get_by_text(run["name"]).first).to_be_visible()
    page.get_by_role("tab", name="Parameters").click()
    shown = page.locator(".cm-content").first  # the run's parameters as JSON (read-only)
    expect(shown).to_contain_text('"limit": 8')
    expect(shown).to_contain_text('"model": "simulated-generator"')
    shot(page, "run-parameters")

    # 6. The demo runs mshep_flow as a subflow, named after its config (model, M, N).
    children = {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}}
    (child,) = stack.post("/flow_runs/filter", children)
    assert child["name"].endswith("· simulated-generator · M=4 N=2"), child["name"]
    assert child["state_type"] == "COMPLETED"
    page.get_by_role("tab", name="Subflow Runs").click()
    subflow = page.get_by_role("link", name=child["name"], exact=True).first
    expect(subflow).to_be_visible()
    shot(page, "run-subflows")
    subflow.click()
    page.wait_for_url(f"**/flow-run/{child['id']}**")

    # 7. The subflow's artifacts: progress, the report, the label table, rows not labelled.
    of_child = {"artifacts": {"flow_run_id": {"any_": [child["id"]]}}}
    artifacts = stack.post("/artifacts/filter", of_child)
    keys = {a["key"]: a for a in artifacts if a["key"]}
    labels = next(a for k, a in keys.items() if k.endswith("-labels"))
    report = next(a for k, a in keys.items() if k.endswith("-report"))
    assert any(k.endswith("-not-labelled") for k in keys), keys
    assert [a["type"] for a in artifacts if not a["key"]] == ["progress"]
    page.get_by_role("tab", name="Artifacts").click()
    for key in keys:
        expect(page.get_by_role("link", name=re.compile(re.escape(key)))).to_be_visible()
    progress = re.compile(r"PROGRESS.*shards finished", re.S)
    expect(page.get_by_role("link", name=progress)).to_be_visible()
    shot(page, "subflow-artifacts", full_page=True)

    # 8. The label table: rows of good / bad step counts, as the artifact holds them.
    page.get_by_role("link", name=re.compile(re.escape(labels["key"]))).click()
    page.wait_for_url(re.compile(f"/artifacts/artifact/{labels['id']}"))
    counts = {row["item"]: row["count"] for row in json.loads(labels["data"])}
    assert counts["good"] > 0 and counts["bad"] > 0, counts
    for item in ("good", "bad", "unknown"):
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=item, exact=True))
        expect(row).to_have_count(1)
        expect(row.get_by_role("cell").last).to_have_text(str(counts[item]))
    shot(page, "label-table")

    # 9. The report: the models and M, N of the run.
    page.goto(f"{base}/v2/artifacts/artifact/{report['id']}")
    expect(page.get_by_role("heading", name="Requests per stage")).to_be_visible()
    summary = "Generator simulated-generator (M = 4), completer simulated-completer (N = 2"
    expect(page.get_by_text(summary).filter(visible=True)).to_be_visible()
    shot(page, "report", full_page=True)

    # The API and the files agree: N=2 from the form, the deployment's generator model kept.
    parameters = stack.get(f"/flow_runs/{child['id']}")["parameters"]  # mshep_flow's config
    assert parameters["completer"]["N"] == 2 and parameters["dataset"]["limit"] == 8
    assert parameters["generator"]["model"] == "simulated-generator"
    assert parameters["generator"]["M"] == 4
    rows = [json.loads(line) for line in (output / "raw" / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 8 * 4
    assert {row["generator_model"] for row in rows} == {"simulated-generator"}
    assert {n for row in rows for n in row["rollouts"] if n} == {2}
    assert all(path.stat().st_size > 0 for path in shot.taken)
