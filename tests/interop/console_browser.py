"""The web console in headless Chromium (Debian's chromium and chromium-driver, Selenium):
log in, browse the catalog and a table, run a query, draw a chart, save it to the dashboard,
open the dashboard, the pipeline and jobs pages; a screenshot of each page goes to --shots.
Prints what it saw as JSON for the Rust test to check."""

import argparse
import json
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--table", required=True, help="namespace.table to browse")
    p.add_argument("--sql", required=True)
    p.add_argument("--shots", required=True)
    p.add_argument("--pipeline", default="", help="the CDC pipeline state to wait for")
    a = p.parse_args()
    os.makedirs(a.shots, exist_ok=True)

    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,860", "--hide-scrollbars"):
        options.add_argument(arg)
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    wait = WebDriverWait(driver, 60)
    seen = {}

    def shot(name):
        driver.save_screenshot(os.path.join(a.shots, name + ".png"))

    try:
        # Not logged in: the login page.
        driver.get(a.base + "/console/catalog")
        wait.until(ec.presence_of_element_located((By.ID, "login-form")))
        seen["login_url"] = driver.current_url.replace(a.base, "")
        shot("login")
        driver.find_element(By.ID, "login-user").send_keys(a.user)
        driver.find_element(By.ID, "login-password").send_keys(a.password)
        driver.find_element(By.ID, "login-submit").click()

        # The catalog, then a table.
        wait.until(ec.presence_of_element_located((By.ID, "table-count")))
        seen["user"] = driver.find_element(By.ID, "user").text
        seen["tables_listed"] = [li.get_attribute("data-table")
                                 for li in driver.find_elements(By.CSS_SELECTOR, "[data-table]")]
        shot("catalog")
        driver.find_element(By.CSS_SELECTOR, f"[data-table='{a.table}'] a").click()
        wait.until(ec.presence_of_element_located((By.ID, "freshness")))
        seen["table_title"] = driver.find_element(By.ID, "table-name").text
        seen["freshness"] = driver.find_element(By.ID, "freshness").text
        seen["schema_columns"] = [r.find_elements(By.TAG_NAME, "td")[1].text
                                  for r in driver.find_elements(By.CSS_SELECTOR, "#schema tbody tr")]
        shot("table")

        # A query in the editor.
        driver.find_element(By.ID, "query-table").click()
        editor = wait.until(ec.presence_of_element_located((By.ID, "sql")))
        editor.clear()
        editor.send_keys(a.sql)
        driver.find_element(By.ID, "run").click()
        wait.until(ec.presence_of_element_located((By.ID, "result-table")))
        seen["result_columns"] = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#result-table thead th")]
        seen["result_rows"] = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                               for tr in driver.find_elements(By.CSS_SELECTOR, "#result-table tbody tr")]
        seen["status"] = driver.find_element(By.ID, "status").text
        shot("sql")

        # A chart of the result, saved to the dashboard.
        Select(driver.find_element(By.ID, "chart-kind")).select_by_value("bar")
        cols = seen["result_columns"]
        Select(driver.find_element(By.ID, "chart-x")).select_by_value(cols[0])
        Select(driver.find_element(By.ID, "chart-y")).select_by_value(cols[-1])
        driver.find_element(By.ID, "draw").click()
        wait.until(lambda d: d.find_element(By.ID, "chart").get_attribute("data-drawn") == "true")
        seen["chart_bars"] = len(driver.find_elements(By.CSS_SELECTOR, "#chart .point"))
        driver.find_element(By.ID, "chart-name").send_keys("Amount by order")
        driver.find_element(By.ID, "save-chart").click()
        wait.until(lambda d: d.find_element(By.ID, "saved").text.startswith("Saved"))
        seen["saved"] = driver.find_element(By.ID, "saved").text
        driver.execute_script("document.getElementById('chart').scrollIntoView()")
        shot("chart")

        # The dashboard draws it.
        driver.get(a.base + "/console/dashboard")
        wait.until(lambda d: any(c.get_attribute("data-drawn") == "true"
                                 for c in d.find_elements(By.CSS_SELECTOR, ".card .chart")))
        seen["dashboard_charts"] = [f.find_element(By.CSS_SELECTOR, "figcaption .name").text
                                    for f in driver.find_elements(By.CSS_SELECTOR, ".card")]
        shot("dashboard")

        # The pipeline page (its state table filled by the page's script) and the jobs page.
        driver.get(a.base + "/console/pipeline")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pipeline-state tbody tr")) > 0)
        if a.pipeline:
            # A few points of lag and rate drawn while changes arrive.
            wait.until(lambda d: a.pipeline in d.find_element(By.ID, "pipeline-state").text
                       and int(d.find_element(By.ID, "pipeline-chart").get_attribute("data-points") or 0) >= 4)
        seen["pipeline_state"] = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#pipeline-state tbody tr")]
        seen["pipeline_tables"] = [r.find_element(By.TAG_NAME, "td").text
                                   for r in driver.find_elements(By.CSS_SELECTOR, "#pipeline-tables tbody tr")]
        driver.set_window_size(1280, 1150)
        shot("pipeline")
        # Every pipeline found from the lake, and the CDC pipeline's history from its commits.
        driver.get(a.base + "/console/pipelines")
        wait.until(ec.presence_of_element_located((By.ID, "pipelines")))
        seen["pipelines"] = [r.find_element(By.TAG_NAME, "td").text
                             for r in driver.find_elements(By.CSS_SELECTOR, "#pipelines tbody tr")]
        shot("pipelines")
        driver.find_element(By.CSS_SELECTOR, "#pipelines a[href^='/console/pipelines/postgres/']").click()
        wait.until(lambda d: d.find_element(By.ID, "history-chart").get_attribute("data-drawn") == "true")
        seen["history_tables"] = [r.find_element(By.TAG_NAME, "td").text
                                  for r in driver.find_elements(By.CSS_SELECTOR, "#pipeline-tables tbody tr")]
        shot("pipeline_history")
        driver.set_window_size(1280, 860)
        driver.get(a.base + "/console/jobs")
        wait.until(ec.presence_of_element_located((By.ID, "jobs")))
        seen["jobs"] = [r.find_element(By.TAG_NAME, "td").text
                        for r in driver.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")]
        shot("jobs")

        # A table the user may not read: the policy's refusal.
        driver.get(a.base + "/console/catalog/hr/salaries")
        wait.until(ec.presence_of_element_located((By.ID, "error")))
        seen["refusal"] = driver.find_element(By.ID, "error").text
        shot("refused")
    except Exception:
        shot("failure")
        print(json.dumps(seen), file=sys.stderr)
        print(driver.page_source[:4000], file=sys.stderr)
        raise
    finally:
        driver.quit()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
