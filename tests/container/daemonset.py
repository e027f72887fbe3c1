"""The DaemonSet (deploy/kubernetes/daemonset.yaml) read as a container engine needs it: the same
capabilities, host namespaces, mounts and arguments, so that the tests run what the manifest says,
not a hand-written copy of it. No pytest import: the VM tier's runc config uses it too."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent.parent
DAEMONSET = REPO / "deploy" / "kubernetes" / "daemonset.yaml"
ARCHIVE = REPO / "build" / "mptcpize-py-image.tar"


@dataclass
class Mount:
    source: str | None      # a host path; None: an empty directory (emptyDir); "configMap": the policy
    target: str
    read_only: bool
    propagation: str | None = None   # HostToContainer -> rslave


@dataclass
class Spec:
    caps: list[str]
    host_pid: bool
    host_network: bool
    read_only_root: bool
    no_new_privileges: bool
    args: list[str]
    env: dict[str, str]
    mounts: list[Mount] = field(default_factory=list)
    probe: list[str] = field(default_factory=list)


def read() -> Spec:
    ds = yaml.safe_load(DAEMONSET.read_text())
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = []
    for m in c["volumeMounts"]:
        v = volumes[m["name"]]
        source = v["hostPath"]["path"] if "hostPath" in v else ("configMap" if "configMap" in v else None)
        mounts.append(Mount(source, m["mountPath"], bool(m.get("readOnly")), m.get("mountPropagation")))
    return Spec(caps=list(sc["capabilities"]["add"]), host_pid=pod["hostPID"],
                host_network=pod["hostNetwork"], read_only_root=sc["readOnlyRootFilesystem"],
                no_new_privileges=not sc["allowPrivilegeEscalation"], args=list(c["args"]),
                env={e["name"]: e["value"] for e in c.get("env", [])}, mounts=mounts,
                probe=list(c["readinessProbe"]["exec"]["command"]))


def podman_args(spec: Spec, policy_dir: Path, tmpfs_ok: bool = True) -> list[str]:
    """`podman run` options for the DaemonSet's pod (image and daemon arguments not included)."""
    out = ["--runtime", "runc", "--ulimit", "nofile=1024:4096", "--ulimit", "nproc=1024:1024",
           "--cap-drop", "ALL", "--cap-add", ",".join(spec.caps)]
    out += ["--pid=host"] if spec.host_pid else []
    out += ["--network=host"] if spec.host_network else []
    out += ["--read-only"] if spec.read_only_root else []
    out += ["--security-opt", "no-new-privileges"] if spec.no_new_privileges else []
    for m in spec.mounts:
        if m.source is None:
            out += ["--tmpfs", m.target]
            continue
        source = str(policy_dir) if m.source == "configMap" else m.source
        opts = ["ro" if m.read_only or m.source == "configMap" else "rw"]
        if m.propagation == "HostToContainer":
            opts.append("rslave")
        out += ["-v", f"{source}:{m.target}:{','.join(opts)}"]
    for k, v in spec.env.items():
        out += ["-e", f"{k}={v}"]
    return out


def runc_config(spec: Spec, base: dict, rootfs: str, policy_dir: Path, extra_args: list[str],
                cgroups_path: str) -> dict:
    """A runc config.json for the DaemonSet's pod from umoci's (`base`, which carries the image's entry
    point and environment): host pid and network namespaces, the capabilities, a read-only root, the
    host mounts, the policy directory, the emptyDirs as tmpfs."""
    cfg = json.loads(json.dumps(base))
    proc = cfg["process"]
    proc["terminal"] = False
    proc["args"] = [*proc["args"], *spec.args, *extra_args]
    proc["env"] = [*proc["env"], *(f"{k}={v}" for k, v in spec.env.items())]
    caps = [f"CAP_{c}" for c in spec.caps]
    proc["capabilities"] = {k: list(caps) for k in ("bounding", "effective", "permitted")}
    proc["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}]
    proc["noNewPrivileges"] = spec.no_new_privileges
    cfg["root"] = {"path": rootfs, "readonly": spec.read_only_root}
    shared = {"pid"} if spec.host_pid else set()
    shared |= {"network"} if spec.host_network else set()
    linux = cfg["linux"]
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] not in shared]
    linux["cgroupsPath"] = cgroups_path
    for m in spec.mounts:
        if m.source is None:
            cfg["mounts"].append({"destination": m.target, "type": "tmpfs", "source": "tmpfs",
                                  "options": ["nosuid", "nodev", "mode=755"]})
            continue
        source = str(policy_dir) if m.source == "configMap" else m.source
        opts = ["rbind", "ro" if m.read_only or m.source == "configMap" else "rw"]
        if m.propagation == "HostToContainer":
            opts.append("rslave")
        cfg["mounts"].append({"destination": m.target, "type": "bind", "source": source, "options": opts})
    return cfg
