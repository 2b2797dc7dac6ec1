#!/usr/bin/env python3
"""Checks that every gstab metric the dashboard and alerting rules query is one a live gstabd
exports. Starts gstabd (metrics on a free port), runs the example trainer against it so every
family has series, scrapes /metrics, and compares names."""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
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


def queried_names(dashboard_path, rules_path):
    exprs = []
    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("expr", "query") and isinstance(v, str):
                    exprs.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    with open(dashboard_path) as f:
        walk(json.load(f))
    with open(rules_path) as f:
        exprs += re.findall(r"expr:\s*(.+)", f.read())
    return exprs, {n for e in exprs for n in re.findall(r"\bgstab_[a-zA-Z0-9_]+", e)}


def main():
    ap = argparse.ArgumentParser()
    for flag in ("--gstabd", "--trainer", "--dashboard", "--rules"):
        ap.add_argument(flag, required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = open(os.path.join(tmp, "gstabd.log"), "w")
        sock = os.path.join(tmp, "gstabd.sock")
        daemon = subprocess.Popen([args.gstabd, "--socket=" + sock, "--state_dir=" + tmp,
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


if __name__ == "__main__":
    main()
