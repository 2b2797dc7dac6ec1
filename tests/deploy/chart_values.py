"""Values of the Helm chart a user can get wrong, each refused with a message naming it, and the
flags the chart sets, which extraArgs may not set again (check_chart.py runs these)."""
import subprocess

import yaml

from chart_objects import check, daemon_container


def helm(args, *extra, chart=None):
    cmd = [args.helm, "template", "gstab", chart or args.chart, "--namespace", "gstab", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def bad_values(args):
    cases = [
        (["--set", "networkPolicy.enabled=true", "--set", "peer.enabled=true",
          "--set", "peer.tlsSecret=s", "--set", "peer.tlsName=n"], "does not cover peer.enabled"),
        (["--set-json", 'networkPolicy.apiFrom=[{"ipBlock": {"cidr": "10.0.0.0/8"}}]'],
         "networkPolicy.apiFrom admits clients to gstabd's TCP API"),
        (["--set", "networkPolicy.metricsFrom=monitoring"], "/networkPolicy/metricsFrom"),
        (["--set", "peer.enabled=true"], "tlsSecret"),
        (["--set", "peer.enabled=true", "--set", "peer.tlsSecret=s"], "needs peer.tlsName"),
        (["--set", "peer.enabled=true", "--set", "peer.tlsSecret=s", "--set", "peer.tlsName=a b"],
         "/peer/tlsName"),
        (["--set", "api.enabled=true"], "/api/tlsSecret"),
        (["--set", "api.enabled=true", "--set", "api.tlsSecret=s", "--set", "api.port=9478"],
         "api.port and metrics.port must differ"),
        (["--set", "api.enabled=true", "--set", "api.tlsSecret=s", "--set", "peer.enabled=true",
          "--set", "peer.tlsSecret=s", "--set", "peer.tlsName=n", "--set", "api.port=7478"],
         "api.port and peer.port must differ"),
        (["--set", "api.operators[0]=a\\,b"], "/api/operators/0"),
        (["--set", "extraArgs={--tls_operators=x}"], "may not set --tls_operators"),
        (["--set", "api.operators[0]=ops"], "api.operators names certificates of gstabd's TCP port"),
        (["--set", "backend=gpu"], "/backend"),
        (["--set", "gpu.enabled=false", "--set", "backend=cuda"], "backend=cuda needs gpu.enabled"),
        (["--set", "metrics.port=70000"], "/metrics/port"),
        (["--set", "state.hostPath=var/lib/gstab"], "/state/hostPath"),
        (["--set", "socket.hostPath="], "/socket/hostPath"),
        (["--set", "daemon.leaseMs=0"], "/daemon/leaseMs"),
        # Seconds meant: gstabd refuses below 100 ms, and every pod would crash-loop.
        (["--set", "daemon.leaseMs=30"], "/daemon/leaseMs"),
        (["--set", "daemon.stepTimeoutMs=60"], "/daemon/stepTimeoutMs"),
        (["--set", "metrics.prot=1"], "'prot'"),
        (["--set", "extraArgs={max_jobs=3}"], "/extraArgs/0"),
        (["--set", "allowUids={-1}"], "/allowUids/0"),
        (["--set", "allowUids={4294967296}"], "/allowUids/0"),
        # gstabd makes a state folder 0700: a socket in it would shut the workers out.
        (["--set", "state.hostPath=/run/gstab/"], "must be apart"),
        (["--set", "socket.hostPath=/var/lib/gstab/sock"], "must be apart"),
        (["--set", "state.hostPath=/run"], "must be apart"),
        (["--set", "allowUids={1000}"], "must admit the helm test pod"),
        # Without root, the capabilities the chart adds are not effective.
        (["--set", "securityContext.runAsUser=1000"], "securityContext.runAsUser must be 0"),
        (["--set", "allowGids={2000}"], "must admit the helm test pod"),
        # The kubelet refuses a root container that must not be root, on every node.
        (["--set", "securityContext.runAsNonRoot=true"], "runAsNonRoot must not be true"),
        (["--set", "socket.gid=2147483648"], "/socket/gid"),  # past Kubernetes' runAsGroup
        # The default affinity keeps gstabd to the amd64 nodes the images run on.
        (["--set", "nodeSelector.kubernetes\\.io/arch=arm64"], "leaves gstabd no node"),
        # Helm replaces a list whole: the chart's two capabilities would be lost.
        (["--set", "securityContext.capabilities.add={IPC_LOCK}"],
         "must keep DAC_OVERRIDE and FOWNER"),
        (["--set", "extraArgs={--socket=/tmp/x.sock}"], "may not set --socket"),
        (["--set", "extraEnv[0].name=NODE_IP", "--set", "extraEnv[0].value=1.2.3.4"],
         "extraEnv may not set NODE_IP"),
        (["--set", "extraEnv[0].value=eth0"], "/extraEnv/0"),
        (["--set", "peer.enabled=true", "--set", "peer.tlsSecret=s", "--set", "peer.tlsName=n",
          "--set", "peer.port=9478"],
         "peer.port and metrics.port must differ"),
        (["--set", "daemon.leaseMs=3000000000"], "/daemon/leaseMs"),
        (["--set", "daemon.cpuThreads=2000"], "/daemon/cpuThreads"),  # gstabd takes 1024
        (["--set", "terminationGracePeriodSeconds=0"], "/terminationGracePeriodSeconds"),
        # Shorter than a stop's drain and its two checkpoints.
        (["--set", "terminationGracePeriodSeconds=20"], "/terminationGracePeriodSeconds"),
        (["--set", "metrics.listenOnPodIP=yes"], "/metrics/listenOnPodIP"),
        # gstabd has no CAP_NET_BIND_SERVICE, and its --max_groups is 32-bit.
        (["--set", "metrics.port=80"], "/metrics/port"),
        (["--set", "metrics.maxGroups=5000000000"], "/metrics/maxGroups"),
        (["--set", "imagePullSecrets={regcred}"], "/imagePullSecrets/0"),
        (["--set", "updateStrategy.type=RollingUpdate",
          "--set", "updateStrategy.rollingUpdate.maxUnavailable=0"], "maxUnavailable may not be 0"),
    ]
    for extra, expected in cases:
        rc, _, err = helm(args, *extra)
        check(rc != 0 and expected in err,
              f"values {' '.join(extra)}: expected a refusal naming {expected!r}, got rc={rc}:"
              f"\n{err}")


def check_managed_flags(args, kinds, extra):
    """extraArgs may not set any flag the chart sets (gstabd keeps a repeated flag's last value,
    so one would silently override the chart's): each of the rendered ones is refused."""
    _, _, container = daemon_container(kinds)
    from_extra_args = {"max_bytes"}  # set by `everything`'s own extraArgs
    for arg in container["args"]:
        name = arg[2:].split("=", 1)[0]
        if name in from_extra_args:
            continue
        rc, _, err = helm(args, *extra, "--set", f"extraArgs={{--{name}=1}}")
        check(rc != 0 and f"may not set --{name}" in err,
              f"extraArgs={{--{name}=1}} was not refused, though the chart sets --{name}: rc={rc}"
              f"\n{err}")
    # One the chart sets only with a value is the user's without it.
    rc, _, err = helm(args, "--set", "extraArgs={--metrics_address=10.0.0.1}")
    check(rc == 0, f"extraArgs --metrics_address refused without metrics.listenOnPodIP:\n{err}")


def check_update_strategy(args):
    """OnDelete (the default) renders without a rollingUpdate left over from a RollingUpdate
    release's values, which the API server would refuse beside it; RollingUpdate keeps its own."""
    for kind, expected in [("OnDelete", None), ("RollingUpdate", {"maxUnavailable": 2})]:
        rc, out, err = helm(args, "--set", f"updateStrategy.type={kind}",
                            "--set", "updateStrategy.rollingUpdate.maxUnavailable=2")
        check(rc == 0, f"helm template with updateStrategy {kind}:\n{err}")
        if rc != 0:
            continue
        ds = [d for d in yaml.safe_load_all(out) if d and d.get("kind") == "DaemonSet"][0]
        strategy = ds["spec"]["updateStrategy"]
        check(strategy.get("type") == kind and strategy.get("rollingUpdate") == expected,
              f"updateStrategy {kind} rendered as {strategy}")


def check_user_annotations(args):
    """The pods' scrape annotations are the chart's where the user's podAnnotations do not set
    them: a user's own (prometheus.io/scrape "false", to keep one scraper off) is kept."""
    rc, out, err = helm(args, "--set-string", "podAnnotations.prometheus\\.io/scrape=false",
                        "--set-string", "podAnnotations.prometheus\\.io/path=",
                        "--set-string", "podAnnotations.team=ml-infra")
    check(rc == 0, f"helm template with podAnnotations:\n{err}")
    if rc != 0:
        return
    ds = [d for d in yaml.safe_load_all(out) if d and d.get("kind") == "DaemonSet"][0]
    ann = ds["spec"]["template"]["metadata"].get("annotations", {})
    check(ann.get("prometheus.io/scrape") == "false" and ann.get("team") == "ml-infra",
          f"the user's podAnnotations were not kept: {ann}")
    check(ann.get("prometheus.io/path") == "" and "prometheus.io/port" in ann,
          f"the user's empty annotation was replaced, or the chart's port is missing: {ann}")
