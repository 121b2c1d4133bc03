#!/usr/bin/python3
"""Drive the Sluice console in headless Chromium (Debian's chromium +
chromium-driver + python3-selenium), for tests/console_browser.rs.

Each step saves a screenshot in --shots and asserts on the page's content
(text and elements, never pixels). Prints "ok: <step>" per step and exits
non-zero with the reason at the first failure.
"""

import argparse
import os
import re
import smtplib
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

p = argparse.ArgumentParser()
p.add_argument("--base", required=True)
p.add_argument("--token", required=True)
p.add_argument("--shots", required=True)
p.add_argument("--search", required=True, help="recipient to search for")
p.add_argument("--queued", required=True, help="queue id to hold and release")
p.add_argument("--smtp", required=True, type=int, help="SMTP port, for the live tail")
p.add_argument("--session-timeout", required=True, type=float)
args = p.parse_args()

profile = tempfile.mkdtemp(prefix="sluice-chromium-")
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for flag in [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
    "--user-data-dir=" + profile,
]:
    opts.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
driver.set_page_load_timeout(30)
wait = WebDriverWait(driver, 15)
step_no = 0


def fail(msg):
    shot("FAILED")
    print("FAIL: " + msg + "\n--- page ---\n" + driver.page_source[:4000], file=sys.stderr)
    driver.quit()
    sys.exit(1)


def shot(name):
    global step_no
    step_no += 1
    path = os.path.join(args.shots, "%02d-%s.png" % (step_no, name))
    driver.save_screenshot(path)
    return path


def ok(name):
    path = shot(name)
    print("ok: %s (%s)" % (name, os.path.basename(path)), flush=True)


def check(cond, msg):
    if not cond:
        fail(msg)


def text():
    # A click that submits a form navigates asynchronously: the body found
    # may belong to the page being left. Read it again from the new page.
    for _ in range(50):
        try:
            return driver.find_element(By.TAG_NAME, "body").text
        except StaleElementReferenceException:
            time.sleep(0.1)
    fail("the page never settled")


def go(path):
    driver.get(args.base + path)


def login(password):
    field = wait.until(lambda d: d.find_element(By.ID, "password"))
    field.clear()
    field.send_keys(password)
    driver.find_element(By.ID, "login").click()
    # Wait for the answer page: the old form goes stale once it has loaded.
    wait.until(EC.staleness_of(field))


def queue_action(action, qid):
    go("/queue")
    boxes = driver.find_elements(By.CSS_SELECTOR, "input.pick[value='%s']" % qid)
    check(len(boxes) == 1, "queue entry %s not on the queue page" % qid)
    boxes[0].click()
    driver.find_element(By.CSS_SELECTOR, "form.queue button[value='%s']" % action).click()
    wait.until(lambda d: d.find_elements(By.ID, "confirm"))
    check(
        ("%s 1 entry?" % action.capitalize()) in text(),
        "no confirmation for %s: %s" % (action, text()[:300]),
    )
    check(qid in text(), "the confirmation does not list %s" % qid)
    ok("confirm-" + action)
    driver.find_element(By.ID, "confirm").click()
    wait.until(lambda d: d.find_elements(By.ID, "flash"))
    check(
        ("%s: 1 entry" % action) in driver.find_element(By.ID, "flash").text,
        "no result for %s" % action,
    )


try:
    # 1. Before login: only the login page.
    go("/history")
    check(driver.current_url.endswith("/login"), "not sent to the login page: " + driver.current_url)
    check("Log in" in driver.title, "title: " + driver.title)
    check(not driver.find_elements(By.TAG_NAME, "nav"), "navigation shown before login")
    ok("login-page")

    # 2. A wrong password is refused.
    login("not-the-token")
    check("Wrong password" in text(), "wrong password accepted? " + text()[:200])
    check(driver.current_url.endswith("/login"), "left the login page")
    ok("wrong-password")

    # 3. The right one: the history page.
    login(args.token)
    wait.until(lambda d: d.current_url.endswith("/history"))
    check("History" in driver.title, "title after login: " + driver.title)
    check(driver.find_elements(By.CSS_SELECTOR, "header nav"), "no navigation after login")
    check(len(driver.find_elements(By.CSS_SELECTOR, "#rows tr")) > 0, "no history rows")
    ok("history")

    # 4. Search by recipient: every row is that recipient's.
    f = driver.find_element(By.ID, "f-recipient")
    f.send_keys(args.search)
    driver.find_element(By.ID, "search").click()
    wait.until(lambda d: "recipient=" in d.current_url)
    rows = driver.find_elements(By.CSS_SELECTOR, "#rows tr")
    check(len(rows) >= 2, "search found %d rows" % len(rows))
    for r in rows:
        check(args.search in r.text, "row not for %s: %s" % (args.search, r.text))
    actions = [r.find_element(By.CSS_SELECTOR, ".act").text for r in rows]
    check("DEFER" in actions, "no DEFER row: %s" % actions)
    check(actions[0] != "RECEIVED" or len(actions) == 1, "not newest first: %s" % actions)
    ok("search-recipient")

    # 5. A row's link opens the message's timeline.
    rows[-1].find_element(By.CSS_SELECTOR, "a.msg").click()
    wait.until(lambda d: d.find_elements(By.ID, "events"))
    body = text()
    for want in ["Envelope and client", "Policy hooks", "Timeline", "RECEIVED", "DEFER",
                 "127.0.0.1", "TLS", "attempt 1", "next retry", args.search]:
        check(want in body, "timeline lacks %r" % want)
    check(re.search(r"TLSv1\.[23]", body), "the TLS version is not shown")
    check("rcptto" in body, "the rcptto hook's verdict is not shown")
    ok("timeline")

    # 6. Hold the queued message, then release it, each confirmed first.
    queue_action("hold", args.queued)
    state = driver.find_element(
        By.XPATH, "//input[@value='%s']/ancestor::tr/td[contains(@class,'state')]" % args.queued
    ).text
    check(state == "held", "state after hold: " + state)
    ok("held")
    queue_action("release", args.queued)
    state = driver.find_element(
        By.XPATH, "//input[@value='%s']/ancestor::tr/td[contains(@class,'state')]" % args.queued
    ).text
    check(state == "queued", "state after release: " + state)
    ok("released")

    # 7. The charts render: an SVG line per series, totals from the history.
    go("/charts")
    svg = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "svg#traffic"))
    lines = svg.find_elements(By.CSS_SELECTOR, "polyline.series")
    check(len(lines) == 4, "%d series drawn" % len(lines))
    totals = {l.get_attribute("data-action"): int(l.get_attribute("data-total")) for l in lines}
    check(totals.get("RECEIVED", 0) >= 3, "received total %s" % totals)
    check(totals.get("REJECT", 0) >= 1, "reject total %s" % totals)
    check(totals.get("DEFER", 0) >= 3, "defer total %s" % totals)
    check(svg.size["width"] > 300 and svg.size["height"] > 100, "svg size %s" % svg.size)
    check(driver.find_elements(By.CSS_SELECTOR, "svg#refusals rect.bar"), "no refusal bars")
    check("no such user here" in text(), "refusal reason not shown")
    ok("charts")
    driver.find_element(By.ID, "range-day").click()
    wait.until(lambda d: "Last day" in d.find_element(By.CSS_SELECTOR, "p.ranges b").text)
    day = driver.find_elements(By.CSS_SELECTOR, "svg#traffic polyline.series[data-action='RECEIVED']")
    check(day and int(day[0].get_attribute("data-total")) == totals["RECEIVED"], "day total differs")
    ok("charts-day")

    # 8. Live tail: a message sent now streams in without a reload.
    go("/tail")
    wait.until(lambda d: "Streaming" in d.find_element(By.ID, "tail-status").text)
    s = smtplib.SMTP("127.0.0.1", args.smtp, timeout=10)
    s.sendmail("tail@example.net", ["tail@example.org"], "Subject: tail\r\n\r\nlive\r\n")
    s.quit()
    try:
        WebDriverWait(driver, 15).until(
            lambda d: "tail@example.org" in d.find_element(By.ID, "rows").text
        )
    except TimeoutException:
        fail("the new record did not stream into the tail")
    check(driver.find_elements(By.CSS_SELECTOR, "#rows tr.new"), "no streamed row marked new")
    ok("live-tail")

    # 9. CSRF: a POST without the token, then with a wrong one, is refused.
    for how in ["missing", "wrong"]:
        go("/queue")
        driver.find_element(By.CSS_SELECTOR, "input.pick[value='%s']" % args.queued).click()
        if how == "missing":
            driver.execute_script("document.querySelector('form.queue input[name=csrf]').remove()")
        else:
            driver.execute_script("document.querySelector('form.queue input[name=csrf]').value = 'forged'")
        driver.find_element(By.CSS_SELECTOR, "form.queue button[value='delete']").click()
        wait.until(lambda d: "Refused" in d.title)
        check("CSRF token is missing or wrong" in text(), "csrf %s not refused" % how)
        ok("csrf-" + how)
    go("/queue")
    check(args.queued in text(), "the entry went despite the refused POSTs")

    # 10. An idle session expires.
    time.sleep(args.session_timeout + 1.5)
    go("/queue")
    check(driver.current_url.endswith("/login"), "expired session still served: " + driver.current_url)
    check("Log in" in driver.title, "not the login page after expiry")
    check("session has expired" in text(), "expiry not explained: " + text()[:200])
    ok("session-expired")
    print("ok: all steps")
finally:
    driver.quit()
