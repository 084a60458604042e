"""Drives the studio in headless Chromium (through chromedriver, with Selenium) as a user would:
sign-in, every page, an invocation from the browser to Completed, a download, a page a scoped token
may not see, and a job whose names, logs and reasons carry markup. Saves a screenshot of each page.

    python3 drive.py CONFIG.json

CONFIG holds: url, trust (the workspace CA, imported into the browser's own trust store as a user
would), within_constraints and outside_constraints (URLs of servers with certificates the CA's key
signed for this host, and for this host and another name), owner, scoped (a token
scoped to `endpoint`), endpoint (its description is markup: `description`), other_endpoint, inputs
(files to upload), expected_rows, hostile_job, hostile_texts, shots (a folder), downloads (a folder).
Exits non-zero, saying why, at the first check that fails.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

# Selenium Manager is never needed (the driver and browser are named below); keep it offline either way.
os.environ["SE_OFFLINE"] = "true"
os.environ["SE_AVOID_STATS"] = "true"

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

cfg = json.load(open(sys.argv[1]))
os.makedirs(cfg["shots"], exist_ok=True)
os.makedirs(cfg["downloads"], exist_ok=True)


def import_ca(trust_pem: str) -> str:
    """A home folder whose NSS database (where Chromium on Linux keeps the user's trusted CAs) holds the
    workspace CA, trusted for servers, as `certutil` or the browser's settings page would import it."""
    home = tempfile.mkdtemp(prefix="cove-studio-home-")
    nssdb = os.path.join(home, ".pki", "nssdb")
    os.makedirs(nssdb)
    for args in (["-N", "--empty-password"], ["-A", "-n", "cove workspace", "-t", "C,,", "-i", trust_pem]):
        subprocess.run(["certutil", "-d", f"sql:{nssdb}", *args], check=True, capture_output=True)
    return home


def check(cond, what):
    if not cond:
        shot("failure")
        raise SystemExit(f"studio check failed: {what}\nat {driver.current_url}\n{driver.find_element(By.TAG_NAME, 'body').text[:3000]}")


shots = []


def shot(name):
    path = os.path.join(cfg["shots"], f"{len(shots) + 1:02d}-{name}.png")
    driver.save_screenshot(path)
    shots.append(path)


def wait_for(css, timeout=20):
    return WebDriverWait(driver, timeout).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))


def go(route, ready):
    driver.get(cfg["url"] + "/#/" + route)
    return wait_for(ready)


def no_injection():
    check(driver.execute_script("return window.__pwned === undefined"), "a hostile string ran as script")
    check(not driver.find_elements(By.CSS_SELECTOR, "img[src=x], #injected, b#injected"), "a hostile string became an element")


# Chromium (started by chromedriver, with this environment) reads the user's trust store under HOME.
os.environ["HOME"] = import_ca(cfg["trust"])
profile = tempfile.mkdtemp(prefix="cove-studio-chromium-")
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for arg in [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1360,1000",
    f"--user-data-dir={profile}",
    "--no-proxy-server",
    # The browser talks to the workspace on loopback and nowhere else: no background services, and
    # every host name but the workspace's address resolves to nothing.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]:
    opts.add_argument(arg)
opts.add_experimental_option("prefs", {"download.default_directory": cfg["downloads"], "download.prompt_for_download": False})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
driver.set_page_load_timeout(30)
try:
    # Sign-in.
    driver.get(cfg["url"] + "/")
    wait_for("#sign-in")
    shot("sign-in")
    driver.find_element(By.ID, "token").send_keys("cove_not_a_token")
    driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()
    WebDriverWait(driver, 10).until(EC.text_to_be_present_in_element((By.ID, "sign-in"), "not valid"))
    driver.find_element(By.ID, "token").clear()
    driver.find_element(By.ID, "token").send_keys(cfg["owner"])
    driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()
    wait_for("#page-endpoints table")
    check("cove_session" not in driver.execute_script("return document.cookie"), "the page's script can read the session cookie")
    check(cfg["endpoint"] in driver.find_element(By.ID, "page-endpoints").text, "the endpoints page lists the endpoint")
    no_injection()
    shot("endpoints")

    # Every page.
    go(f"endpoints/{cfg['endpoint']}", ".deployment")
    text = driver.find_element(By.ID, "page-endpoints").text
    check("Scoring URI" in text and "(default)" in text, "the endpoint page shows its scoring URI and default deployment")
    check(cfg["description"] in text, "the endpoint's description (markup) is shown as text")
    no_injection()
    shot("endpoint")
    for page, ready in [("models", "#page-models table"), ("data", "#page-data"), ("datastores", "#page-datastores table"),
                        ("tokens", "#token-form"), ("audit", "#audit-list table"), ("diagnose", "#diagnose-verdict"),
                        ("jobs", "#job-list table")]:
        go(page, ready)
        no_injection()
        shot(page)
    go("audit", "#audit-list table")
    rows = lambda: [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#audit-list tbody tr")]
    check(any("ok (" in r for r in rows()) and any("refused" in r for r in rows()), f"the audit log holds both: {rows()}")
    Select(driver.find_element(By.ID, "audit-outcome")).select_by_value("refused")
    WebDriverWait(driver, 10).until(lambda d: rows() and not any("ok (" in r for r in rows()))
    check(all("refused" in r for r in rows()), f"the audit filter shows refusals only: {rows()}")

    # Invoke from the browser: upload files, set an override, start, watch it complete without a reload.
    go("invoke", "#invoke-form")
    Select(driver.find_element(By.ID, "invoke-endpoint")).select_by_value(cfg["endpoint"])
    driver.find_element(By.ID, "invoke-files").send_keys("\n".join(cfg["inputs"]))
    driver.find_element(By.ID, "ov-mini_batch_size").send_keys("2")
    shot("invoke")
    driver.find_element(By.ID, "invoke-submit").click()
    WebDriverWait(driver, 60).until(lambda d: "#/jobs/" in d.current_url)
    driver.execute_script("window.__sameDocument = true")
    wait_for("#job-summary .progress")
    seen = set()
    deadline = time.time() + 120
    while time.time() < deadline:
        bars = driver.find_elements(By.CSS_SELECTOR, "#job-summary [role=progressbar]")
        if bars:
            seen.add(bars[0].get_attribute("aria-valuenow"))
        if driver.find_elements(By.CSS_SELECTOR, "#job-summary [data-status=Completed]"):
            break
        time.sleep(0.1)
    check(driver.find_elements(By.CSS_SELECTOR, "#job-summary [data-status=Completed]"), "the job reached Completed in the browser")
    check(driver.execute_script("return window.__sameDocument === true"), "the page was reloaded to show progress")
    bar = driver.find_element(By.CSS_SELECTOR, "#job-summary [role=progressbar]")
    check(bar.get_attribute("aria-valuenow") == bar.get_attribute("aria-valuemax"), "the bar is full at the end")
    check(len(seen) >= 2, f"the bar moved while the page stayed: {sorted(seen)}")
    wait_for("#job-downloads a.download")
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "log").text.strip())
    shot("job")

    # A download of the predictions.
    driver.find_element(By.CSS_SELECTOR, "#job-downloads a.download").click()
    target = os.path.join(cfg["downloads"], "predictions.csv")
    deadline = time.time() + 20
    while time.time() < deadline and not (os.path.exists(target) and os.path.getsize(target) > 0):
        time.sleep(0.2)
    check(os.path.exists(target), "the predictions were downloaded")
    rows = open(target).read().splitlines()
    check(len(rows) == cfg["expected_rows"], f"the download has {cfg['expected_rows']} rows: {rows}")

    # The hostile job: every string from the workspace shows as text.
    go(f"jobs/{cfg['hostile_job']}", "#job-summary [data-status]")
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "log").text.strip())
    options = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#log-file option")]
    stdout = next((o for o in options if "user/stdout" in o), None)
    check(stdout, f"the logs include the scorer's stdout: {options}")
    Select(driver.find_element(By.ID, "log-file")).select_by_value(stdout)
    WebDriverWait(driver, 10).until(lambda d: cfg["hostile_texts"][0] in d.find_element(By.ID, "log").text)
    page = driver.find_element(By.ID, "page-jobs").text + driver.find_element(By.ID, "log").text
    for text in cfg["hostile_texts"]:
        check(text in page, f"the hostile string is shown as text: {text}")
    no_injection()
    shot("hostile-names")

    # A scoped token: its own endpoint, but not another's, and no tokens page.
    driver.find_element(By.ID, "sign-out").click()
    wait_for("#sign-in")
    driver.find_element(By.ID, "token").send_keys(cfg["scoped"])
    driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()
    wait_for("#page-endpoints")
    check(not driver.find_elements(By.ID, "nav-tokens"), "a scoped invoker sees no tokens page")
    go(f"endpoints/{cfg['other_endpoint']}", "#forbidden")
    check("scoped to endpoint" in driver.find_element(By.ID, "forbidden").text, "the forbidden page says why")
    shot("forbidden")

    # The workspace CA, trusted as a user trusts it, vouches for this host, and for nothing else: its
    # name constraints make Chromium refuse a certificate its own key signed for another name.
    driver.get(cfg["within_constraints"] + "/")
    check("s_server" in driver.find_element(By.TAG_NAME, "body").text, "a certificate within the CA's names is trusted")
    driver.get(cfg["outside_constraints"] + "/")
    body = driver.find_element(By.TAG_NAME, "body").text
    check("s_server" not in body and "ERR_CERT" in body, "a certificate for another name is refused")
    shot("name-constraints")
    print(json.dumps({"screenshots": shots}))
finally:
    driver.quit()
