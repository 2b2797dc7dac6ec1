#!/usr/bin/env python3
"""Checks the Helm chart (helm/gstab) the way a cluster would meet it, short of a cluster.

For several sets of values it renders the chart with the real helm, validates every built-in
object against Kubernetes' own schemas (strict: unknown fields are errors) for the oldest and
newest Kubernetes the chart supports, and asserts what an operator relies on: the socket and
state on host paths, metrics wired to one port everywhere, no GPU requested, the alerting rules
and dashboard exactly the ones in deploy/ (those checks of the objects: chart_objects.py). Then
it starts the real gstabd with the arguments the chart renders (container paths mapped to a
temporary folder) and runs the chart's own probe and test commands against it. Values a user can get wrong must be refused with a message naming
them. Run with the Python of the tools' virtual environment (PyYAML, kubernetes-validate)."""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request

import yaml

from chart_objects import (FAILURES, NETWORK_POLICY, check, check_api, check_common, check_cpu,
                           check_gpu, check_monitoring, check_network_policy, check_peer,
                           daemon_container, flag)
from pod_sandbox import (CAP_BITS, as_security_context, can_emulate_pods, effective_caps,
                         free_port, make_tls, train_as)
from chart_values import (bad_values, check_managed_flags, check_update_strategy,
                          check_user_annotations, helm)
from probe import wait_until_healthy

KUBE_VERSIONS = ("1.25.0", "1.37.0")


def render(args, *extra):
    rc, out, err = helm(args, *extra)
    if rc != 0:
        raise SystemExit(f"helm template {' '.join(extra)} failed:\n{err}")
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs):
    out = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def validate(args, docs, tmp, name):
    builtin = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    path = os.path.join(tmp, name + ".yaml")
    with open(path, "w") as f:
        yaml.safe_dump_all(builtin, f)
    for version in KUBE_VERSIONS:
        p = subprocess.run([args.validate, "--strict", "--quiet", "-k", version, path],
                           capture_output=True, text=True)
        check(p.returncode == 0,
              f"{name}: Kubernetes {version} schema rejects the chart:\n{p.stdout}{p.stderr}")


def check_long_release_name(args):
    """A release name as long as helm allows (53) still gives a Service name that is a DNS
    label (at most 63 characters), which the API server requires."""
    release = "training-platform-observability-prod-cluster-eu-west1"
    p = subprocess.run([args.helm, "template", release, args.chart, "--namespace", "gstab"],
                       capture_output=True, text=True)
    check(p.returncode == 0, f"helm template {release}: {p.stderr}")
    services = [d for d in yaml.safe_load_all(p.stdout) if d and d["kind"] == "Service"]
    check(services and all(len(s["metadata"]["name"]) <= 63 for s in services),
          f"release {release}: Service names {[s['metadata']['name'] for s in services]} "
          "longer than 63 characters")


def check_notes(args):
    """What `helm install` prints: the socket and what a training pod needs, for these values."""
    cases = [([], ["/run/gstab/gstabd.sock", "hostPID: true", "pod-security",
                   "must set\nhonor_labels: true"]),
             (["--set", "hostPID=false"], ["WARNING: gpu.enabled with hostPID false"]),
             (["--set", "metrics.prometheusRule.enabled=true"],
              ["WARNING: metrics.prometheusRule without metrics.serviceMonitor"]),
             (["--set", "gpu.enabled=false", "--set", "socket.gid=2000",
               "--set", "socket.hostPath=/var/run/gstab"],
              ["/var/run/gstab/gstabd.sock", "group 2000", "hostIPC: true in"]),
             (["--set", "api.enabled=true", "--set", "api.tlsSecret=api-tls",
               "--set", "api.operators={ops}"],
              ["port 7479 of each gstabd pod's IP", "api-tls's ca.crt", "ops act on every job",
               "gstabctl --socket=POD_IP:7479 status"])]
    for extra, wanted in cases:
        p = subprocess.run([args.helm, "install", "gstab", args.chart, "--dry-run=client",
                            "--namespace", "gstab", *extra], capture_output=True, text=True)
        notes = p.stdout.partition("NOTES:")[2]
        check(p.returncode == 0 and notes, f"helm install --dry-run {extra}: {p.stderr}")
        for w in wanted:
            check(w in notes, f"NOTES for {extra} do not say {w!r}:\n{notes}")
        check("<no value>" not in notes, f"NOTES for {extra} show an unset value:\n{notes}")
        check("hostPID" not in notes or "gpu.enabled=false" not in extra,
              f"NOTES ask CPU workers for hostPID:\n{notes}")


def check_privileged(args):
    """securityContext.privileged: the API server refuses it beside allowPrivilegeEscalation
    false (the chart's default), so the container's context leaves that out."""
    kinds = by_kind(render(args, "--set", "securityContext.privileged=true"))
    sc = kinds["DaemonSet"][0]["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    check(sc.get("privileged") is True and sc.get("allowPrivilegeEscalation") is not False,
          f"privileged: a security context the API server refuses: {sc}")


def check_training_job(args, tmp):
    """deploy/kubernetes's example job: valid, and mounting what the chart serves."""
    with open(args.training_job) as f:
        job = yaml.safe_load(f)
    validate(args, [job], tmp, "training-job")
    with open(os.path.join(args.chart, "values.yaml")) as f:
        values = yaml.safe_load(f)
    spec = job["spec"]["template"]["spec"]
    check(spec.get("hostIPC") is True and spec.get("hostPID") is True,
          "training job: without hostIPC and hostPID its GPU gradients cannot reach gstabd")
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    vol = vols.get(mounts.get("/run/gstab"), {})
    check(vol.get("hostPath", {}).get("path") == values["socket"]["hostPath"],
          "training job: /run/gstab is not the chart's socket folder")


def check_packaged(args, tmp):
    """A chart repository serves `helm package`'s archive: the linked rules and dashboard must
    be inside it, not links to files the archive lacks."""
    p = subprocess.run([args.helm, "package", args.chart, "--destination", tmp],
                       capture_output=True, text=True)
    check(p.returncode == 0, f"helm package: {p.stderr}")
    archive = [f for f in os.listdir(tmp) if f.endswith(".tgz")]
    if p.returncode != 0 or len(archive) != 1:
        return
    rc, out, err = helm(args, "--set", "metrics.prometheusRule.enabled=true",
                        "--set", "metrics.grafanaDashboard.enabled=true",
                        chart=os.path.join(tmp, archive[0]))
    check(rc == 0, f"helm template of the packaged chart: {err}")
    if rc == 0:
        kinds = by_kind([d for d in yaml.safe_load_all(out) if d])
        with open(args.rules) as f:
            check(kinds["PrometheusRule"][0]["spec"] == yaml.safe_load(f),
                  "the packaged chart's PrometheusRule differs from the rules file")
        with open(args.dashboard) as f:
            check(json.loads(kinds["ConfigMap"][0]["data"]["gstab-dashboard.json"]) ==
                  json.load(f), "the packaged chart's dashboard differs from the dashboard file")


def check_confinement(args, name, container, pid, sock_path, tmp):
    """gstabd (`pid`) runs with the chart's capabilities, and serves a training worker that is
    not root: through the socket's group when the chart sets one (and the gid allow-list),
    and refuses it otherwise."""
    sc = container["securityContext"]
    unknown = set(sc["capabilities"]["add"]) - CAP_BITS.keys()
    check(not unknown, f"{name}: add {unknown} to CAP_BITS")
    want = sum(1 << CAP_BITS.get(cap, 0) for cap in sc["capabilities"]["add"])
    check(effective_caps(pid) == want,
          f"{name}: gstabd's capabilities {effective_caps(pid):#x} are not the chart's {want:#x}")
    reach = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "test", "-x", os.path.dirname(sock_path)])
    check(reach.returncode == 0, f"{name}: uid 65534 cannot reach the socket's folder")
    gid = sc.get("runAsGroup")
    rc, out = train_as(args.trainer, tmp, sock_path, 65534, gid if gid is not None else 65534)
    if gid is None:
        check(rc != 0 and "may not use gstabd's socket" in out and "group" in out,
              f"{name}: a worker outside the socket's group got in, or was not told why "
              f"(rc={rc}):\n{out}")
        rc, out = train_as(args.trainer, tmp, sock_path, 0, 0)
    check(rc == 0, f"{name}: a training worker failed against gstabd with the chart's "
                   f"privileges (rc={rc}):\n{out}")


def make_client_certificate(folder, name):
    """A client certificate of make_tls(folder)'s CA for the common name `name`."""
    subprocess.run(
        f"cd {folder} && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        f"-keyout {name}.key -out {name}.csr -subj /CN={name} && printf "
        f"'extendedKeyUsage=clientAuth\\n' > {name}.ext && openssl x509 -req -in {name}.csr "
        f"-CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile {name}.ext -out {name}.pem",
        shell=True, check=True, capture_output=True)


def check_api_port(args, name, tls, port, sock):
    """gstabctl off the node through the rendered API port: an operator's certificate changes a
    job a worker made through the socket; gstabd's own certificate, which api.operators does
    not name, is refused it."""
    p = subprocess.run([args.trainer, f"--socket={sock}", "--job=api-job", "--steps=2",
                        "--print_every=1000"], capture_output=True, text=True, timeout=60)
    check(p.returncode == 0, f"{name}: the trainer failed on the socket: {p.stdout}{p.stderr}")

    def ctl(cert):
        env = dict(os.environ, GSTAB_TLS_CA=f"{tls}/ca.crt", GSTAB_TLS_CERT=f"{tls}/{cert}",
                   GSTAB_TLS_KEY=f"{tls}/{cert.rsplit('.', 1)[0]}.key", GSTAB_TLS_NAME="gstab-peer")
        return subprocess.run([args.gstabctl, f"--socket=127.0.0.1:{port}", "config", "set",
                               "--job=api-job", "policy=monitor"],
                              capture_output=True, text=True, env=env)

    p = ctl("ops.pem")
    check(p.returncode == 0, f"{name}: an operator's gstabctl over the API port fails: {p.stderr}")
    p = ctl("tls.crt")
    check(p.returncode != 0 and "belongs to uid" in p.stderr,
          f"{name}: a certificate api.operators does not name changed another's job "
          f"(rc={p.returncode}): {p.stderr}")


def run_rendered(args, name, kinds, tmp):
    """Starts gstabd with the chart's arguments, mapped onto `tmp`; runs its probes."""
    _, pod, c = daemon_container(kinds)
    root = os.path.join(tmp, name)
    paths = {"/run/gstab": root + "/run", "/run/probe": root + "/probe",
             "/var/lib/gstab": root + "/state",
             "/etc/gstab/peer-tls": root + "/tls", "/etc/gstab/api-tls": root + "/api-tls"}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    if any(a.startswith("--peer_tls_ca=") for a in c["args"]):
        make_tls(paths["/etc/gstab/peer-tls"])
    api = flag(c, "listen") is not None
    if api:
        make_tls(paths["/etc/gstab/api-tls"])
        make_client_certificate(paths["/etc/gstab/api-tls"], "ops")
    port, api_port = free_port(), free_port()

    def mapped(a):
        for k, v in paths.items():
            a = a.replace("=" + k, "=" + v)
        return a.replace("$(NODE_IP)", "127.0.0.1").replace("$(POD_IP)", "127.0.0.1")

    argv = [mapped(a) for a in c["args"]]
    argv = [f"--metrics_port={port}" if a.startswith("--metrics_port=") else a for a in argv]
    argv = [f"--listen=127.0.0.1:{api_port}" if a.startswith("--listen=") else a for a in argv]
    # This machine has no GPU: the CUDA backend would refuse to start; every other flag is
    # the chart's.
    argv = ["--backend=cpu" if a == "--backend=cuda" else a for a in argv]
    log = open(os.path.join(root, "gstabd.log"), "w")
    sc = c["securityContext"]
    emulate = can_emulate_pods()
    if not emulate:
        print(f"SKIP {name}: the pod's security context (needs root and mount namespaces)")
        # gstabd, its probes and the test pod's command all run as this uid then: admit it.
        argv = [f"{a},{os.getuid()}" if a.startswith("--allow_uids=") else a for a in argv]
    daemon = subprocess.Popen([*(as_security_context(sc, root) if emulate else []), args.gstabd,
                               *argv], stdout=log, stderr=log)
    def on_host(command):  # a container's command, as this machine runs it
        return [args.gstabctl if x == "gstabctl" else mapped(x) for x in command]

    probe = on_host(c["readinessProbe"]["exec"]["command"])
    try:
        ok = wait_until_healthy(daemon, probe)
        with open(log.name) as f:
            check(ok, f"{name}: gstabd with the chart's arguments never became healthy:\n"
                      f"{' '.join(argv)}\n{f.read()}")
        if not ok:
            return
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        check(b"# TYPE gstab_" in body, f"{name}: /metrics serves no gstab_ family")
        if api:
            check_api_port(args, name, paths["/etc/gstab/api-tls"], api_port,
                           mapped("=" + flag(c, "socket"))[1:])
        if emulate:
            check_confinement(args, name, c, daemon.pid, mapped("=" + flag(c, "socket"))[1:],
                              tmp)
        test_pod = [d for d in kinds["Pod"] if "test" in d["metadata"]["annotations"].get(
            "helm.sh/hook", "")][0]
        p = subprocess.run(on_host(test_pod["spec"]["containers"][0]["command"]),
                           capture_output=True, text=True)
        check(p.returncode == 0, f"{name}: the helm test pod's command fails: {p.stderr}")
        daemon.send_signal(signal.SIGTERM)
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        check(int(flag(c, "stop_limit_s")) == grace - 5,
              f"{name}: gstabd's stop limit is not 5 s under the pod's grace period")
        check(daemon.wait(timeout=grace) == 0, f"{name}: gstabd did not stop cleanly on SIGTERM")
        check(subprocess.run(probe, capture_output=True).returncode != 0,
              f"{name}: the probe still passes with gstabd stopped")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def main():
    ap = argparse.ArgumentParser()
    for f in ("--helm", "--validate", "--chart", "--rules", "--dashboard", "--gstabd",
              "--gstabctl", "--training-job", "--trainer"):
        ap.add_argument(f, required=True)
    args = ap.parse_args()


    everything = ["--set", "metrics.serviceMonitor.enabled=true",
                  "--set", "metrics.serviceMonitor.interval=1m30s",  # a Prometheus duration
                  "--set", "metrics.prometheusRule.enabled=true",
                  "--set", "metrics.grafanaDashboard.enabled=true",
                  "--set", "peer.enabled=true", "--set", "peer.tlsSecret=gstab-peer-tls",
                  "--set", "peer.tlsName=gstab-peer", "--set", "socket.gid=2000",
                  "--set", "api.enabled=true", "--set", "api.tlsSecret=gstab-api-tls",
                  "--set", "api.operators={ops,oncall,email:sre@example.org}",
                  "--set", "metrics.listenOnPodIP=true",
                  "--set", "allowUids={0,1000}", "--set", "allowGids={2000}",
                  "--set", "extraArgs={--max_bytes=1073741824}",
                  "--set", "extraEnv[0].name=NCCL_SOCKET_IFNAME",
                  "--set", "extraEnv[0].value=eth0"]
    for extra in ([], everything):
        lint = subprocess.run([args.helm, "lint", "--strict", args.chart, *extra],
                              capture_output=True, text=True)
        check(lint.returncode == 0, f"helm lint --strict {extra}:\n{lint.stdout}{lint.stderr}")
    check_notes(args)
    check_long_release_name(args)
    check_privileged(args)
    scenarios = {
        "gpu-defaults": ([], [check_gpu]),
        "cpu": (["--set", "gpu.enabled=false"], [check_cpu]),
        "gpu-everything": (everything, [check_gpu, check_peer, check_api,
                                        lambda n, k: check_monitoring(n, k, args)]),
        "cpu-everything": (everything + ["--set", "gpu.enabled=false"],
                           [check_cpu, check_peer, check_api]),
        "cpu-network-policy": (NETWORK_POLICY + ["--set", "gpu.enabled=false"],
                               [check_cpu, check_api, check_network_policy]),
    }
    os.umask(0o022)
    # In /tmp, whatever TMPDIR says: workers of other uids reach the socket, as through a host
    # path.
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        for name, (extra, checks) in scenarios.items():
            docs = render(args, *extra)  # the `helm test` pod included
            kinds = by_kind(docs)
            validate(args, docs, tmp, name)
            check_common(name, kinds)
            check("networkPolicy.enabled=true" in extra or "NetworkPolicy" not in kinds,
                  f"{name}: a NetworkPolicy without networkPolicy.enabled")
            for c in checks:
                c(name, kinds)
            run_rendered(args, name, kinds, tmp)
        bad_values(args)
        check_user_annotations(args)
        check_update_strategy(args)
        check_managed_flags(args, by_kind(render(args, *everything)), everything)
        check_training_job(args, tmp)
        package_dir = os.path.join(tmp, "package")
        os.makedirs(package_dir)
        check_packaged(args, package_dir)

    print(f"{len(FAILURES)} failed" if FAILURES else "chart checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
