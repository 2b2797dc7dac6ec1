"""Static checks of deploy/container/Dockerfile, with Docker's own parser (the `dockerfile`
package wraps buildkit's): what would otherwise surface only in a `docker build`, minutes in.

- every shell-form RUN is valid POSIX shell (dash -n, the /bin/sh of Debian images);
- every variable a RUN reads is an ARG or ENV of its stage, or set by the command itself (an
  ARG declared before the first FROM is not visible inside a stage unless declared again);
- every COPY source from the build context exists in the repository;
- what the runtime stage copies from the build stage is what the build stage makes, and the
  runtime stage installs the package lists the image check compares with the binaries;
- the last stage picks a flavour's stage (runtime-cpu or runtime-cuda) by FLAVOUR."""
import glob
import os
import re
import subprocess

import dockerfile

ALWAYS_SET = {"PATH", "HOME", "HOSTNAME", "PWD"}
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
ASSIGNED = re.compile(r"(?:^|[\s;&|(])([A-Za-z_][A-Za-z0-9_]*)=")


def stages(commands):
    """[(name, [commands])] for each FROM."""
    out = []
    for c in commands:
        if c.cmd == "FROM":
            name = c.value[2] if len(c.value) >= 3 and c.value[1].upper() == "AS" else ""
            out.append((name, []))
        elif out:
            out[-1][1].append(c)
    return out


def check_dockerfile(path, context, check):
    commands = dockerfile.parse_file(path)
    all_stages = stages(commands)
    names = [name for name, _ in all_stages]
    check(names == ["build", "runtime", "runtime-cpu", "runtime-cuda", ""],
          f"{path}: expected the stages build, runtime, runtime-cpu and runtime-cuda, and an "
          f"unnamed last one, not {names}")
    last_from = [c for c in commands if c.cmd == "FROM"][-1].value
    check(last_from == ("runtime-${FLAVOUR}",),
          f"{path}: the last stage should be FROM runtime-${{FLAVOUR}}, not {last_from}")
    check(not all_stages[-1][1], f"{path}: the last stage only picks a flavour")
    required = {name: any(c.cmd == "ENV" and "NVIDIA_REQUIRE_CUDA" in c.value[::2] for c in body)
                for name, body in all_stages}
    check(required.get("runtime-cuda") and not required.get("runtime-cpu")
          and not required.get("runtime"),
          f"{path}: only the GPU flavour should set NVIDIA_REQUIRE_CUDA: {required}")
    shell = "dash" if subprocess.run(["which", "dash"], capture_output=True).returncode == 0 \
        else "sh"
    made_by_build = ""
    for name, body in all_stages:
        known = set(ALWAYS_SET)
        for c in body:
            if c.cmd in ("ARG", "ENV"):
                known.update(v.split("=")[0] for v in c.value[::2 if c.cmd == "ENV" else 1])
            elif c.cmd == "RUN" and not c.json:
                script = c.value[0]
                if name == "build":
                    made_by_build += script
                sh = subprocess.run([shell, "-n", "-c", script], capture_output=True, text=True)
                check(sh.returncode == 0,
                      f"{path}: stage {name or 'runtime'}: RUN is not valid shell: {sh.stderr}")
                local = set(ASSIGNED.findall(script))
                unknown = set(VARIABLE.findall(script)) - known - local
                check(not unknown, f"{path}: stage {name or 'runtime'}: RUN reads {unknown}, "
                                   f"neither ARG nor ENV there")
            elif c.cmd == "COPY":
                from_stage = [f for f in c.flags if f.startswith("--from=")]
                for source in c.value[:-1]:
                    if from_stage:
                        check(source.rstrip("/") in made_by_build,
                              f"{path}: COPY {from_stage[0]} {source}: the build stage never "
                              f"makes it")
                    else:
                        check(glob.glob(os.path.join(context, source)),
                              f"{path}: COPY {source}: not in the build context {context}")
    runtime = "".join(c.value[0] for name, body in all_stages if name == "runtime"
                      for c in body if c.cmd == "RUN" and not c.json)
    for listed in ("packages-runtime.txt", "packages-cuda.txt"):
        check(listed in runtime, f"{path}: the runtime stage does not install {listed}")
