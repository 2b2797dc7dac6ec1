#!/usr/bin/env python3
"""Checks what the container image (deploy/container) is made of, without a container engine.

1. `cmake --install` of the build tree into a temporary prefix gives gstabd, gstabctl,
   libgstab.so and gstab.h, and the installed gstabd serves (the installed gstabctl's health
   probe passes against it), as the image's entrypoint would. examples/minimal.c, built
   outside this tree against the installed tree (with pkg-config, and with CMake's
   find_package(gstab)), attaches to it and steps.
2. Every shared library those binaries load is provided in the runtime stage: each library's
   Debian package (dpkg -S) is listed in packages-runtime.txt, or is one that debian:12-slim
   itself is made of; each library from outside Debian (CUDA, NCCL) maps to a package listed
   in packages-cuda.txt. A new dependency that the image would lack fails here, not in a
   cluster's crash loop.
3. The Dockerfile itself passes dockerfile_check (shell, variables, COPY sources).
Run with the Python of the tools' virtual environment (Docker's Dockerfile parser)."""
import argparse
import os
import subprocess
import sys
import tempfile

from dockerfile_check import check_dockerfile
from probe import wait_until_healthy

# In debian:12-slim already (apt and dpkg depend on them).
BASE_IMAGE = {"libc6", "libgcc-s1", "libstdc++6"}
# Libraries from NVIDIA's repository rather than Debian's, by soname.
CUDA_PACKAGES = {"libcudart.so.13": "cuda-cudart-13-0", "libnccl.so.2": "libnccl2"}
FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what)


def listed(path):
    with open(path) as f:
        return {line.strip() for line in f if line.strip() and not line.startswith("#")}


def loaded_libraries(binary):
    """soname -> resolved path, for every library the loader finds for `binary`."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = {}
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            check(target != "not", f"{binary}: {parts[0]} not found by the loader")
            if target.startswith("/"):
                libs[parts[0]] = target
    return libs


def usr_merge_variants(path):
    """`path` and its twin across the /usr merge, resolved and not: dpkg knows one of them."""
    out = set()
    for p in {path, os.path.realpath(path)}:
        out.add(p)
        out.add(p[len("/usr"):] if p.startswith("/usr/") else "/usr" + p)
    return out


def owning_packages(paths):
    """path -> the Debian package that ships it, for those some package ships (one dpkg -S)."""
    variants = {p: usr_merge_variants(p) for p in paths}
    query = sorted(set().union(*variants.values())) if variants else []
    out = subprocess.run(["dpkg", "-S", *query], capture_output=True, text=True).stdout
    shipped = {}
    for line in out.splitlines():
        package, _, file = line.partition(": ")
        shipped[file.strip()] = package.split(":")[0]
    return {p: next((shipped[v] for v in vs if v in shipped), None)
            for p, vs in variants.items()}


def check_packages(binaries, runtime, cuda):
    loads = {os.path.basename(b): loaded_libraries(b) for b in binaries}
    packages = owning_packages({path for libs in loads.values() for path in libs.values()})
    for name, libs in loads.items():
        for soname, path in sorted(libs.items()):
            package = packages[path]
            if package is None:
                wanted = CUDA_PACKAGES.get(soname)
                check(wanted is not None and wanted in cuda,
                      f"{name} loads {soname} ({path}), which no Debian package ships and "
                      f"packages-cuda.txt provides nothing for")
            else:  # CUDA from NVIDIA's .deb packages, as in the image, is dpkg's too
                check(package in runtime or package in cuda or package in BASE_IMAGE,
                      f"{name} loads {soname} from package {package}, missing from "
                      f"packages-runtime.txt and packages-cuda.txt")


# A C project of a user of the installed tree.
CMAKE_PROJECT = """cmake_minimum_required(VERSION 3.16)
project(minimal LANGUAGES C)
find_package(gstab 0.2 CONFIG REQUIRED)
add_executable(minimal_c minimal.c)
target_link_libraries(minimal_c PRIVATE gstab::gstab m)
"""


def built_against(prefix, example, work):
    """examples/minimal.c built against `prefix` as a user would: {how: program}, or None."""
    os.makedirs(work)
    source = os.path.join(work, "minimal.c")
    with open(example) as src, open(source, "w") as dst:
        dst.write(src.read())
    with open(os.path.join(work, "CMakeLists.txt"), "w") as f:
        f.write(CMAKE_PROJECT)
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(prefix, "lib/pkgconfig"))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "gstab"], env=env,
                           capture_output=True, text=True)
    check(flags.returncode == 0, f"pkg-config finds no gstab in the installed tree: {flags.stderr}")
    by_pkg_config = os.path.join(work, "minimal_pkg_config")
    if flags.returncode == 0:
        cc = subprocess.run(["cc", "-Wall", "-Werror", "-o", by_pkg_config, source,
                             *flags.stdout.split(), "-lm"], capture_output=True, text=True)
        check(cc.returncode == 0, f"cc with pkg-config's flags failed: {cc.stderr}")
    build = os.path.join(work, "build")
    cmake = subprocess.run(["cmake", "-S", work, "-B", build, "-G", "Ninja",
                            "-DCMAKE_PREFIX_PATH=" + prefix], capture_output=True, text=True)
    if cmake.returncode == 0:
        cmake = subprocess.run(["cmake", "--build", build], capture_output=True, text=True)
    check(cmake.returncode == 0,
          f"a CMake project with find_package(gstab) failed:\n{cmake.stdout}{cmake.stderr}")
    return {"pkg-config": by_pkg_config, "find_package": os.path.join(build, "minimal_c")}


def check_steps(programs, prefix, sock):
    for how, program in programs.items():
        if not os.path.exists(program):
            continue
        # pkg-config's flags set no run path: the loader is told, as a user would. CMake's
        # program finds the library through the run path CMake gave it.
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        if how == "pkg-config":
            env["LD_LIBRARY_PATH"] = os.path.join(prefix, "lib")
        run = subprocess.run([program, sock, "installed-" + how], env=env, capture_output=True,
                             text=True, timeout=60)
        check(run.returncode == 0 and "spikes 1" in run.stdout,
              f"minimal.c built with {how} did not step: exit {run.returncode}\n"
              f"{run.stdout}{run.stderr}")


def check_installed(build, prefix, example):
    subprocess.run(["cmake", "--install", build, "--prefix", prefix], check=True,
                   capture_output=True)
    programs = built_against(prefix, example, os.path.join(prefix, "user"))
    for f in ("bin/gstabd", "bin/gstabctl", "lib/libgstab.so", "include/gstab/gstab.h",
              "lib/pkgconfig/gstab.pc", "lib/cmake/gstab/gstabConfig.cmake"):
        check(os.path.exists(os.path.join(prefix, f)), f"cmake --install gives no {f}")
    gstabd = os.path.join(prefix, "bin/gstabd")
    if not os.path.exists(gstabd):
        return
    sock = os.path.join(prefix, "gstabd.sock")
    daemon = subprocess.Popen([gstabd, "--socket=" + sock, "--state_dir=" + prefix + "/state",
                               "--backend=cpu", "--metrics_port=-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    probe = [os.path.join(prefix, "bin/gstabctl"), "--socket=" + sock, "health"]
    try:
        check(wait_until_healthy(daemon, probe), "the installed gstabd never served")
        check_steps(programs, prefix, sock)
    finally:
        daemon.terminate()
        err = daemon.communicate(timeout=30)[1].decode()
        check(daemon.returncode == 0, f"the installed gstabd exited {daemon.returncode}:\n{err}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True, help="the CMake build tree")
    ap.add_argument("--container", required=True, help="deploy/container")
    args = ap.parse_args()
    runtime = listed(os.path.join(args.container, "packages-runtime.txt"))
    cuda = listed(os.path.join(args.container, "packages-cuda.txt"))
    check_dockerfile(os.path.join(args.container, "Dockerfile"),
                     os.path.dirname(os.path.dirname(os.path.abspath(args.container))), check)
    with tempfile.TemporaryDirectory() as prefix:
        source = os.path.dirname(os.path.dirname(os.path.abspath(args.container)))
        check_installed(args.build, prefix, os.path.join(source, "examples/minimal.c"))
        binaries = [os.path.join(prefix, f) for f in ("bin/gstabd", "bin/gstabctl",
                                                      "lib/libgstab.so")]
        check_packages([b for b in binaries if os.path.exists(b)], runtime, cuda)
    print(f"{len(FAILURES)} failed" if FAILURES else "image checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
