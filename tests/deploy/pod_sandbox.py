"""The host side of a pod, for the chart's checks: run gstabd as its container would (a
read-only root filesystem, only the capabilities the chart grants, its primary group) and a
training worker under another uid, with setpriv and a mount namespace."""
import os
import shutil
import socket
import subprocess


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tls(folder):
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
    subprocess.run(
        f"cd {folder} && openssl req -x509 {ec} -keyout ca.key -out ca.crt -subj /CN=test-ca "
        f"&& openssl req {ec} -keyout tls.key -out peer.csr -subj /CN=gstab-peer && printf "
        f"'subjectAltName=DNS:gstab-peer\\nextendedKeyUsage=serverAuth,clientAuth\\n' > ext && "
        f"openssl x509 -req -in peer.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 "
        f"-extfile ext -out tls.crt", shell=True, check=True, capture_output=True)


def can_emulate_pods():
    """Whether this process may drop to other uids and make mount namespaces (root with
    CAP_SYS_ADMIN, as on the build machines; not root inside an unprivileged container)."""
    if os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


def as_security_context(sc, writable):
    """A command prefix that gives a root process what `sc` gives gstabd's container: a
    read-only root filesystem but for `writable` (its host paths), then (setpriv) only the
    capabilities it adds, no new privileges, its primary group."""
    out = []
    if sc.get("readOnlyRootFilesystem"):
        out = ["unshare", "--mount", "sh", "-c", 'mount --make-rprivate / && '
               'mount --bind "$0" "$0" && mount -o remount,bind,ro / && exec "$@"', writable]
    caps = sc.get("capabilities", {})
    assert caps.get("drop") == ["ALL"], "the chart should drop every capability"
    keep = ",".join("+" + c.lower() for c in caps.get("add", []))
    out += ["setpriv", "--inh-caps=-all", f"--bounding-set=-all,{keep}" if keep else
            "--bounding-set=-all"]
    if sc.get("allowPrivilegeEscalation") is False:
        out.append("--no-new-privs")
    if "runAsGroup" in sc:
        out += [f"--regid={sc['runAsGroup']}", "--clear-groups"]
    return out


def effective_caps(pid):
    with open(f"/proc/{pid}/status") as f:
        line = next(l for l in f if l.startswith("CapEff:"))
    return int(line.split()[1], 16)


# linux/capability.h
CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4,
            "KILL": 5, "SETGID": 6, "SETUID": 7, "NET_BIND_SERVICE": 10, "NET_ADMIN": 12,
            "IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_PTRACE": 19, "SYS_ADMIN": 21,
            "SYS_RESOURCE": 24}


def train_as(trainer_binary, root, sock, uid, gid):
    """The example trainer as uid:gid against `sock` (20 steps, one spike): its exit code."""
    trainer = os.path.join(root, "mlp_trainer")  # reachable by any uid, wherever the build is
    if not os.path.exists(trainer):
        shutil.copy(trainer_binary, trainer)
        os.chmod(trainer, 0o755)
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", trainer,
           f"--socket={sock}", f"--job=pod-{uid}", "--steps=20", "--spike_steps=10",
           "--print_every=1000"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr
