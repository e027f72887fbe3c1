"""deploy/kubernetes/: rendered by kustomize (kubectl kustomize, offline) and every object validated
against Kubernetes 1.32's schemas (kubernetes-validate, strict: unknown fields are errors)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.container.daemonset import REPO

DEPLOY = REPO / "deploy" / "kubernetes"
K8S_VERSION = "1.32.0"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}:/usr/local/bin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/setup.sh installs it into the venv)")
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kustomize") / "all.yaml"
    r = subprocess.run([tool("kubectl"), "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out.write_text(r.stdout)
    return out


def test_kustomize_renders_the_namespace_policy_and_daemonset(rendered):
    docs = list(yaml.safe_load_all(rendered.read_text()))
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("ConfigMap", "mptcpize-py-policy"), ("DaemonSet", "mptcpize-py"), ("Namespace", "mptcpize-system")]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] and pod["hostNetwork"]
    (c,) = pod["containers"]
    assert c["securityContext"]["privileged"] is False and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["readinessProbe"]["exec"]["command"] == ["mptcpize-py", "status"]
    assert {"name": "MPTCPIZE_HOST_ROOT", "value": "/host"} in c["env"]


@pytest.mark.parametrize("path", ["rendered", *sorted(p.name for p in DEPLOY.glob("*.yaml")
                                                     if p.name not in ("kustomization.yaml", "podmonitor.yaml"))])
def test_manifests_validate_against_kubernetes_1_32(path, rendered):
    target = rendered if path == "rendered" else DEPLOY / path
    r = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(target)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passed" in r.stdout and "against version 1.32" in r.stdout, r.stdout


def test_a_broken_manifest_is_caught(tmp_path):
    """The validator is not a rubber stamp: a misspelt field of the same DaemonSet fails."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((DEPLOY / "daemonset.yaml").read_text().replace("hostPID:", "hostPid:"))
    r = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(bad)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stdout
