"""The chart's rendered objects as an operator relies on them, checked one flavour or option
at a time (check_chart.py renders them): host paths for the socket and state, probes on
gstabd's own socket, one metrics port, no GPU requested, placement, monitoring, the peer and API
ports, the NetworkPolicy. Failures are collected in FAILURES."""
import json
import os

import yaml


FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what)


def flag(container, name):
    """The value of --name=... in the container's args, or None."""
    prefix = f"--{name}="
    values = [a[len(prefix):] for a in container["args"] if a.startswith(prefix)]
    return values[-1] if values else None


def daemon_container(kinds):
    ds = kinds["DaemonSet"][0]
    pod = ds["spec"]["template"]
    return ds, pod, pod["spec"]["containers"][0]


def check_common(name, kinds):
    ds, pod, c = daemon_container(kinds)
    spec = pod["spec"]
    check(spec.get("hostIPC") is True, f"{name}: hostIPC (workers' shared memory) not set")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    sock = flag(c, "socket")
    sock_dir = os.path.dirname(sock)
    check(sock_dir in mounts and "hostPath" in vols[mounts[sock_dir]],
          f"{name}: the socket folder {sock_dir} is not a host path workers can mount")
    state = flag(c, "state_dir")
    check(state in mounts and "hostPath" in vols[mounts[state]],
          f"{name}: --state_dir {state} is not on the host (checkpoints would die with the pod)")
    # The probes ask on a socket of the pod's own (not the host's: the workers' uids' connection
    # caps must not fail them).
    probe_sock = flag(c, "health_socket")
    probe_dir = os.path.dirname(probe_sock or "")
    check(probe_sock and probe_dir in mounts and "emptyDir" in vols[mounts[probe_dir]],
          f"{name}: --health_socket {probe_sock} is not in a volume of the pod's own")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = c[probe]["exec"]["command"]
        check(cmd[:3] == ["gstabctl", f"--socket={probe_sock}", "health"],
              f"{name}: {probe} does not ask gstabd's health on {probe_sock}: {cmd}")
        # Its own waits (3 s for a connection, then --timeout_s for the answer) end before the
        # kubelet's timeout, so that a slow answer fails as gstabctl says, not as a kill.
        waits = [int(a.split("=", 1)[1]) for a in cmd if a.startswith("--timeout_s=")]
        check(len(waits) == 1 and 3 + waits[0] < c[probe]["timeoutSeconds"],
              f"{name}: {probe} may outlast its timeoutSeconds: {cmd}")
    limits = json.dumps(c.get("resources", {}))
    check("nvidia.com/gpu" not in limits,
          f"{name}: the DaemonSet requests GPUs, which the training pods would then lack")
    # One metrics port everywhere: the flag, the container port, the annotation, the Service.
    port = int(flag(c, "metrics_port"))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports.get("metrics") == port, f"{name}: containerPort {ports} != --metrics_port {port}")
    ann = pod["metadata"].get("annotations", {})
    if "prometheus.io/port" in ann:
        check(ann["prometheus.io/port"] == str(port), f"{name}: scrape annotation port differs")
    labels = pod["metadata"]["labels"]
    check(ds["spec"]["selector"]["matchLabels"].items() <= labels.items(),
          f"{name}: the DaemonSet's selector does not match its pods")
    # A chart release alone must not change the pods (and restart every node's gstabd).
    versioned = {"helm.sh/chart", "app.kubernetes.io/version"} & labels.keys()
    check(not versioned, f"{name}: the pods carry the chart's version labels {versioned}")
    for svc in kinds.get("Service", []):
        check(svc["spec"]["selector"].items() <= labels.items(),
              f"{name}: Service {svc['metadata']['name']} selects no gstabd pod")
        check(svc["spec"]["ports"][0]["targetPort"] in ("metrics", port),
              f"{name}: Service targets another port")
    check(c["securityContext"].get("allowPrivilegeEscalation") is False,
          f"{name}: privilege escalation allowed")
    # The DaemonSet would adopt (and delete) a `helm test` pod its selector matches.
    for test_pod in kinds.get("Pod", []):
        test_labels = test_pod["metadata"].get("labels", {})
        check(not ds["spec"]["selector"]["matchLabels"].items() <= test_labels.items(),
              f"{name}: the DaemonSet's selector matches the test pod {test_pod['metadata']['name']}")
        for svc in kinds.get("Service", []):
            check(not svc["spec"]["selector"].items() <= test_labels.items(),
                  f"{name}: Service {svc['metadata']['name']} routes to the test pod")
    return ds, pod, c


def node_terms(pod):
    """The pod's required node-affinity terms, each as {(key, operator): values}."""
    affinity = pod["spec"].get("affinity", {}).get("nodeAffinity", {})
    terms = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {})
    return [{(e["key"], e["operator"]): e.get("values") for e in t["matchExpressions"]}
            for t in terms.get("nodeSelectorTerms", [])]


def check_image_nodes(name, which, terms):
    """Each default node-affinity term keeps to the nodes the images run on (Linux, x86_64)."""
    for t in terms:
        check(t.get(("kubernetes.io/os", "In")) == ["linux"] and
              t.get(("kubernetes.io/arch", "In")) == ["amd64"],
              f"{name}: {which} may land on nodes the images do not run on: {t}")


def check_gpu(name, kinds):
    _, pod, c = daemon_container(kinds)
    env = {e["name"]: e.get("value") for e in c["env"]}
    if "everything" in name:
        check(env.get("NCCL_SOCKET_IFNAME") == "eth0", f"{name}: extraEnv not in the container")
    check(flag(c, "backend") == "cuda", f"{name}: GPU nodes should run --backend=cuda")
    check(pod["spec"].get("runtimeClassName") == "nvidia", f"{name}: no NVIDIA runtime class")
    check(env.get("NVIDIA_VISIBLE_DEVICES") == "all",
          f"{name}: gstabd must see every GPU of its node")
    check(pod["spec"].get("hostPID") is True, f"{name}: CUDA IPC across pods needs hostPID")
    check(c["image"].endswith("-cuda"), f"{name}: image {c['image']} is not the CUDA flavour")
    # On GPU nodes only (elsewhere the NVIDIA runtime class has no handler), tolerating their taint.
    for p in [pod] + kinds.get("Pod", []):
        which = p["metadata"].get("name", "the DaemonSet's pod")
        check(any(t.get(("nvidia.com/gpu.present", "In")) == ["true"] for t in node_terms(p)),
              f"{name}: {which} is not kept to GPU nodes: {node_terms(p)}")
        check_image_nodes(name, which, node_terms(p))
        check(any(t.get("key") == "nvidia.com/gpu" for t in p["spec"].get("tolerations", [])),
              f"{name}: {which} does not tolerate the nvidia.com/gpu taint")


def check_cpu(name, kinds):
    _, pod, c = daemon_container(kinds)
    env = {e["name"] for e in c["env"]}
    check(flag(c, "backend") == "cpu", f"{name}: CPU nodes should run --backend=cpu")
    check("runtimeClassName" not in pod["spec"] and "NVIDIA_VISIBLE_DEVICES" not in env,
          f"{name}: a CPU deployment asks for the NVIDIA runtime")
    check(c["image"].endswith("-cpu"), f"{name}: image {c['image']} is not the CPU flavour")
    check(pod["spec"].get("hostPID") is False,
          f"{name}: the CPU backend needs no host pid namespace, yet the chart asks for it")
    # Never on a node a GPU release serves: both would take its socket and state folders.
    terms = node_terms(pod)
    check(len(terms) == 1 and terms[0].get(("nvidia.com/gpu.present", "NotIn")) == ["true"],
          f"{name}: the CPU flavour may land on GPU nodes: {terms}")
    check_image_nodes(name, "the DaemonSet's pod", terms)
    check(not pod["spec"].get("tolerations"), f"{name}: the CPU flavour tolerates GPU taints")


def check_monitoring(name, kinds, args):
    with open(args.rules) as f:
        rules = yaml.safe_load(f)
    rule = kinds["PrometheusRule"][0]
    check(rule["spec"] == rules, f"{name}: the PrometheusRule differs from {args.rules}")
    with open(args.dashboard) as f:
        dashboard = json.load(f)
    cm = kinds["ConfigMap"][0]
    check(json.loads(cm["data"]["gstab-dashboard.json"]) == dashboard,
          f"{name}: the dashboard ConfigMap differs from {args.dashboard}")
    sm = kinds["ServiceMonitor"][0]
    ep = sm["spec"]["endpoints"][0]
    check(ep.get("honorLabels") is True,
          f"{name}: without honorLabels Prometheus renames gstabd's `job` label")
    svc = kinds["Service"][0]
    job = svc["metadata"]["labels"].get(sm["spec"]["jobLabel"])
    down = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "GstabDaemonDown"]
    check(job is not None and f'job="{job}"' in down[0]["expr"],
          f"{name}: the scrape job ({job}) is not the one GstabDaemonDown watches")
    check(sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(),
          f"{name}: the ServiceMonitor selects no Service")
    check(ep["port"] in [p["name"] for p in svc["spec"]["ports"]],
          f"{name}: the ServiceMonitor scrapes a port the Service lacks")


def check_peer(name, kinds):
    _, pod, c = daemon_container(kinds)
    spec = pod["spec"]
    check(spec.get("hostNetwork") is True,
          f"{name}: Gloo/NCCL listen on the node's address: hostNetwork needed")
    check(flag(c, "peer_listen") == "$(NODE_IP):7478", f"{name}: --peer_listen not on the node IP")
    env = {e["name"]: e for e in c["env"]}
    check(env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP",
          f"{name}: NODE_IP is not the node's address")
    check(mounted_secret(pod, c, "/etc/gstab/peer-tls") == "gstab-peer-tls",
          f"{name}: the peer TLS secret is not mounted")


def mounted_secret(pod, container, path):
    """The name of the Secret mounted at `path` in the container, or None."""
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    return vols.get(mounts.get(path), {}).get("secret", {}).get("secretName")


def check_api(name, kinds):
    """gstabd's TCP API: on the pod's IP, mutual TLS from its Secret, the operators' names."""
    _, pod, c = daemon_container(kinds)
    check(flag(c, "listen") == "$(POD_IP):7479", f"{name}: --listen not on the pod's IP")
    env = {e["name"]: e for e in c["env"]}
    check(env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP",
          f"{name}: POD_IP is not the pod's address")
    check([flag(c, f) for f in ("tls_cert", "tls_key", "tls_client_ca")] ==
          [f"/etc/gstab/api-tls/{f}" for f in ("tls.crt", "tls.key", "ca.crt")],
          f"{name}: --tls_cert, --tls_key, --tls_client_ca are not the API Secret's files")
    check(flag(c, "tls_operators") == "ops,oncall,email:sre@example.org",
          f"{name}: --tls_operators not rendered")
    check(mounted_secret(pod, c, "/etc/gstab/api-tls") == "gstab-api-tls",
          f"{name}: the API's TLS secret is not mounted")
    check({"name": "api", "containerPort": 7479, "protocol": "TCP"} in c["ports"],
          f"{name}: no container port for the API")


NETWORK_POLICY = ["--set", "networkPolicy.enabled=true", "--set", "api.enabled=true",
                  "--set", "api.tlsSecret=gstab-api-tls",
                  "--set", "api.operators={ops,oncall,email:sre@example.org}",
                  "--set-json", 'networkPolicy.metricsFrom=[{"namespaceSelector": {"matchLabels":'
                  ' {"kubernetes.io/metadata.name": "monitoring"}}}]',
                  "--set-json", 'networkPolicy.apiFrom=[{"ipBlock": {"cidr": "10.0.0.0/8"}}]']


def check_network_policy(name, kinds):
    """networkPolicy.enabled: gstabd's pods, and only they, take connections on the metrics and
    API ports from the peers given, and open none."""
    _, pod, c = daemon_container(kinds)
    policies = kinds.get("NetworkPolicy", [])
    check(len(policies) == 1, f"{name}: {len(policies)} NetworkPolicies, not 1")
    if not policies:
        return
    spec = policies[0]["spec"]
    selector = spec["podSelector"]["matchLabels"]
    labels = pod["metadata"]["labels"]
    check(selector and all(labels.get(k) == v for k, v in selector.items()),
          f"{name}: the NetworkPolicy's selector {selector} misses gstabd's pods {labels}")
    for test_pod in kinds.get("Pod", []):
        test_labels = test_pod["metadata"]["labels"]
        check(not all(test_labels.get(k) == v for k, v in selector.items()),
              f"{name}: the NetworkPolicy also selects the helm test pod")
    # By the container's port names: a pod not yet replaced by an upgrade (OnDelete) keeps its
    # own ports open when their numbers change.
    ports = {p["name"] for p in c["ports"]}
    rules = {r["ports"][0]["port"]: r.get("from") for r in spec["ingress"]}
    check(set(rules) <= ports, f"{name}: the NetworkPolicy names ports {list(rules)} that "
          f"gstabd's container does not ({sorted(ports)})")
    check(rules == {
        "metrics": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}],
        "api": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]},
        f"{name}: the NetworkPolicy's ingress {spec['ingress']} is not the metrics port from "
        f"metricsFrom and the API port from apiFrom")
    check(sorted(spec["policyTypes"]) == ["Egress", "Ingress"] and spec.get("egress") == [],
          f"{name}: the NetworkPolicy lets gstabd's pods open connections: {spec}")
