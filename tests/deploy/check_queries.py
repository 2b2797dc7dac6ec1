#!/usr/bin/env python3
"""Checks that every gstab metric the dashboard and alerting rules query is one a live gstabd
exports, and that a real Prometheus evaluates every dashboard query. Starts gstabd (metrics on
a free port), runs the example trainer against it so every family has series, scrapes
/metrics and compares names, then has Prometheus scrape gstabd and runs each query (the
dashboard's $job variable as every job): each must give a series."""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request


def exported_names(text):
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            names.add(name)
            if kind == "histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def dashboard_exprs(dashboard_path):
    """The dashboard's PromQL: its panels' and variables' queries (not the datasource
    variable's, which names a plugin)."""
    exprs = []
    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "datasource":
                return
            for k, v in node.items():
                if k in ("expr", "query") and isinstance(v, str):
                    exprs.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    with open(dashboard_path) as f:
        walk(json.load(f))
    return exprs


def queried_names(dashboard_path, rules_path):
    exprs = dashboard_exprs(dashboard_path)
    with open(rules_path) as f:
        exprs += re.findall(r"expr:\s*(.+)", f.read())
    return exprs, {n for e in exprs for n in re.findall(r"\bgstab_[a-zA-Z0-9_]+", e)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_query(port, query):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        return json.load(urllib.request.urlopen(url, timeout=10))
    except urllib.error.HTTPError as e:  # a query Prometheus refuses: 400 with its reason
        return json.load(e)


def failing_queries(prometheus, metrics_port, exprs, tmp):
    """The dashboard queries a real Prometheus, scraping gstabd, refuses or answers with no
    series: [(query, why)]."""
    port = free_port()
    config = os.path.join(tmp, "prometheus.yml")
    with open(config, "w") as f:
        f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gstabd\n"
                "    honor_labels: true\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{metrics_port}']\n")
    log = open(os.path.join(tmp, "prometheus.log"), "w")
    prom = subprocess.Popen([prometheus, "--config.file=" + config,
                             "--storage.tsdb.path=" + os.path.join(tmp, "tsdb"),
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        # Three scrapes at least, so rates and increases have points to work on.
        deadline = time.monotonic() + 60
        while True:
            try:
                r = prometheus_query(port, "count_over_time(gstab_steps_total[1m])")
                if r["status"] == "success" and any(float(v["value"][1]) >= 3
                                                    for v in r["data"]["result"]):
                    break
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                sys.exit("Prometheus never scraped gstabd three times")
            time.sleep(0.5)
        failed = []
        for e in exprs:
            # A template variable's label_values(METRIC, LABEL) as the PromQL Grafana runs.
            query = re.sub(r"^label_values\((.+),\s*(\w+)\)$", r"group by (\2) (\1)", e)
            r = prometheus_query(port, query.replace("$job", ".*"))
            if r.get("status") != "success":
                failed.append((e, r.get("error", r)))
            elif not r["data"]["result"]:  # a wrong label or name matches nothing
                failed.append((e, "no series, though the trainer's job has every family"))
        return failed
    finally:
        prom.terminate()
        prom.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    for flag in ("--gstabd", "--trainer", "--dashboard", "--rules"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--prometheus", default="/usr/bin/prometheus")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = open(os.path.join(tmp, "gstabd.log"), "w")
        sock = os.path.join(tmp, "gstabd.sock")
        daemon = subprocess.Popen([args.gstabd, "--socket=" + sock, "--state_dir=" + tmp + "/state",
                                   "--metrics_port=0"], stdout=log, stderr=log)
        try:
            port = None
            for _ in range(200):
                with open(log.name) as f:
                    m = re.search(r"metrics on http://0\.0\.0\.0:(\d+)", f.read())
                if m and os.path.exists(sock):
                    port = int(m.group(1))
                    break
                time.sleep(0.05)
            if port is None:
                sys.exit("gstabd did not start")
            subprocess.run([args.trainer, "--socket=" + sock, "--steps=80", "--spike_steps=40",
                            "--print_every=1000"], check=True, stdout=subprocess.DEVNULL)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            failed = failing_queries(args.prometheus, port, dashboard_exprs(args.dashboard), tmp)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
    exported = exported_names(text)
    exprs, queried = queried_names(args.dashboard, args.rules)
    missing = sorted(queried - exported)
    print(f"{len(exprs)} queries use {len(queried)} gstab metric names; gstabd exports "
          f"{len(exported)}")
    if not queried:
        sys.exit("no gstab metric found in the queries: is the parser broken?")
    if missing:
        sys.exit("queried but not exported: " + ", ".join(missing))
    if failed:
        sys.exit("dashboard queries Prometheus refuses, or that give nothing:\n" +
                 "\n".join(f"  {e}\n    {why}" for e, why in failed))
    print(f"Prometheus evaluates all {len(dashboard_exprs(args.dashboard))} dashboard queries")


if __name__ == "__main__":
    main()
