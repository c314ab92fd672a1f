#!/usr/bin/env python3
"""Offline checks of the rendered kustomize output that a schema cannot make.

Usage: check_rendered.py RENDERED.yaml [--check-config BINARY]

Reads the objects that `kubectl kustomize deploy/kubernetes/base` printed and
checks the sidecar set-up against the gateway's own configuration (the
gateway.toml inside the rendered ConfigMap): native sidecar, probes on the
admin port, shutdown budget, read-only directory mounts covering every path
the config names, /tmp, security contexts, resources, selectors, the
NetworkPolicy's ports. With --check-config, it also lays the pod's files out
in a temporary folder (ConfigMap and Secret keys at their mount paths) and
runs `BINARY check-config` on them: the config, the JWKS and the credentials
exactly as the pod would see them.

Prints one line per check; exits 1 if any failed. Needs PyYAML (a dependency
of kubernetes-validate) and Python >= 3.11 (tomllib).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import posixpath
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

GATEWAY = "concur-gateway"
EXEMPT_ANNOTATION = "concur-gateway.dev/security-exempt-containers"
# Defaults from docs/configuration.md.
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_ADMIN = "127.0.0.1:9090"
DEFAULT_DRAIN_DELAY_S = 5
DEFAULT_SHUTDOWN_GRACE_S = 30
SHUTDOWN_MARGIN_S = 10
ALLOWED_EGRESS = {("UDP", 53), ("TCP", 53), ("TCP", 443)}

results: list[tuple[bool, str]] = []


def check(ok: bool, what: str, why: str = "") -> bool:
    results.append((ok, what))
    print(f"  {'ok  ' if ok else 'FAIL'} {what}{'' if ok or not why else ': ' + why}")
    return ok


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def labels_match(selector: dict | None, labels: dict) -> bool:
    sel = (selector or {}).get("matchLabels") or {}
    if (selector or {}).get("matchExpressions"):
        return False  # not used here; keep the check simple and strict
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())


def port_number(port, container: dict) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def main() -> int:
    args = sys.argv[1:]
    binary = None
    if "--check-config" in args:
        i = args.index("--check-config")
        binary = args[i + 1]
        del args[i : i + 2]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]

    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"]: d for d in by_kind.get("Secret", [])}

    deployments = by_kind.get("Deployment", [])
    if not check(len(deployments) == 1, "one Deployment", f"found {len(deployments)}"):
        return 1
    dep = deployments[0]
    tmpl = dep["spec"]["template"]
    pod = tmpl["spec"]
    pod_meta = tmpl.get("metadata") or {}
    pod_labels = tmpl["metadata"].get("labels") or {}

    print("Pod:")
    check(pod.get("automountServiceAccountToken") is False, "automountServiceAccountToken: false")
    psc = pod.get("securityContext") or {}
    check(psc.get("runAsNonRoot") is True, "pod securityContext runAsNonRoot")
    check(
        (psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
        "pod securityContext seccompProfile RuntimeDefault",
    )

    inits = pod.get("initContainers") or []
    mains = pod.get("containers") or []
    gw = next((c for c in inits if c["name"] == GATEWAY), None)
    if not check(gw is not None, f"{GATEWAY} is an init container"):
        return 1
    check(gw.get("restartPolicy") == "Always", f"{GATEWAY} is a native sidecar (restartPolicy: Always)")
    check(not any(c["name"] == GATEWAY for c in mains), f"{GATEWAY} is not also a main container")

    # A third-party image that cannot run locked down (the official ClamAV
    # image starts as root to prepare its folders) is named, with the reason,
    # in the pod annotation below; it must still drop ALL capabilities but
    # what it adds, forbid privilege escalation, and use RuntimeDefault.
    exempt = set(
        filter(None, ((pod_meta.get("annotations") or {}).get(EXEMPT_ANNOTATION, "")).replace(",", " ").split())
    )
    print("Containers:")
    for c in inits + mains:
        n = c["name"]
        sc = c.get("securityContext") or {}
        if n in exempt:
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            ok = (
                sc.get("allowPrivilegeEscalation") is False
                and not sc.get("privileged")
                and "ALL" in ((sc.get("capabilities") or {}).get("drop") or [])
                and seccomp == "RuntimeDefault"
            )
            check(ok, f"{n}: exempt from non-root ({EXEMPT_ANNOTATION}), still no escalation, drop ALL, RuntimeDefault")
            res = c.get("resources") or {}
            missing = [
                f"{kind}.{r}" for kind in ("requests", "limits") for r in ("cpu", "memory") if r not in (res.get(kind) or {})
            ]
            check(not missing, f"{n}: cpu/memory requests and limits", "missing " + ", ".join(missing))
            continue
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        problems = []
        if sc.get("runAsNonRoot") is not True:
            problems.append("runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) in (None, 0):
            problems.append("runAsUser (non-zero, numeric)")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append("readOnlyRootFilesystem")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append("allowPrivilegeEscalation: false")
        if sc.get("privileged"):
            problems.append("privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append("capabilities.drop: [ALL]")
        if (sc.get("capabilities") or {}).get("add"):
            problems.append("no capabilities.add")
        if seccomp != "RuntimeDefault":
            problems.append("seccompProfile RuntimeDefault")
        check(not problems, f"{n}: restrictive securityContext", "missing " + ", ".join(problems))
        res = c.get("resources") or {}
        missing = [
            f"{kind}.{r}"
            for kind in ("requests", "limits")
            for r in ("cpu", "memory")
            if r not in (res.get(kind) or {})
        ]
        check(not missing, f"{n}: cpu/memory requests and limits", "missing " + ", ".join(missing))

    print(f"{GATEWAY} configuration:")
    gw_args = (gw.get("command") or []) + (gw.get("args") or [])
    config_path = None
    if "--config" in gw_args and gw_args.index("--config") + 1 < len(gw_args):
        config_path = gw_args[gw_args.index("--config") + 1]
    else:
        config_path = next(
            (e.get("value") for e in gw.get("env") or [] if e["name"] == "CONCUR_GATEWAY_CONFIG"),
            None,
        )
    if not check(bool(config_path), "config path given (--config or CONCUR_GATEWAY_CONFIG)"):
        return 1

    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = gw.get("volumeMounts") or []

    def volume_files(vol: dict) -> dict[str, bytes] | None:
        """The files a configMap/secret volume shows, from the rendered objects."""
        if "configMap" in vol:
            obj = configmaps.get(vol["configMap"]["name"])
            if obj is None:
                return None
            files = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
            files |= {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
            items = vol["configMap"].get("items")
        elif "secret" in vol:
            obj = secrets.get(vol["secret"]["secretName"])
            if obj is None:
                return None
            files = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            files |= {k: v.encode() for k, v in (obj.get("stringData") or {}).items()}
            items = vol["secret"].get("items")
        else:
            return None
        if items:
            files = {i["path"]: files[i["key"]] for i in items if i["key"] in files}
        return files

    def locate(path: str) -> tuple[dict, dict, str] | None:
        """(mount, volume, file name inside it) of the mount that holds `path`."""
        best = None
        for m in mounts:
            mp = m["mountPath"].rstrip("/")
            if path == mp or path.startswith(mp + "/"):
                if best is None or len(mp) > len(best[0]["mountPath"].rstrip("/")):
                    best = (m, volumes.get(m["name"]), path[len(mp) + 1 :])
        return best

    def check_file(path: str, what: str, want_secret: bool = False) -> None:
        loc = locate(path)
        if not check(loc is not None and loc[1] is not None, f"{what} {path} is on a mounted volume"):
            return
        m, vol, rel = loc
        files = volume_files(vol)
        check(files is not None, f"{what}: volume {m['name']} is a ConfigMap or Secret in the output")
        if files is None:
            return
        if m.get("subPath"):
            check(False, f"{what}: mounted as a directory", "subPath mounts never see updates")
        else:
            check(rel in files, f"{what}: key {rel!r} exists in volume {m['name']}", f"keys: {sorted(files)}")
        check(m.get("readOnly") is True, f"{what}: mount {m['mountPath']} is readOnly")
        if want_secret:
            check("secret" in vol, f"{what}: comes from a Secret")

    check_file(config_path, "config")
    loc = locate(config_path)
    files = volume_files(loc[1]) if loc and loc[1] else None
    if not check(bool(files) and loc[2] in files, "config file readable from the rendered ConfigMap"):
        return 1
    try:
        cfg = tomllib.loads(files[loc[2]].decode())
    except tomllib.TOMLDecodeError as e:
        check(False, "gateway.toml is valid TOML", str(e))
        return 1
    server = cfg.get("server", {})
    listen_host, listen_port = split_addr(server.get("listen", DEFAULT_LISTEN))
    check(ipaddress.ip_address(listen_host).is_loopback, f"server.listen {listen_host}:{listen_port} is loopback")
    admin_host, admin_port = split_addr(server.get("admin_listen", DEFAULT_ADMIN))
    check(
        not ipaddress.ip_address(admin_host).is_loopback,
        f"server.admin_listen {admin_host}:{admin_port} is reachable by the kubelet (not loopback)",
    )
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = (gw.get(probe) or {}).get("httpGet") or {}
        port = port_number(get.get("port"), gw)
        check(
            get.get("path") == path and port == admin_port,
            f"{probe}: GET {path} on admin port {admin_port}",
            f"found {get.get('path')} on port {get.get('port')} (= {port})",
        )
    drain = server.get("drain_delay_s", DEFAULT_DRAIN_DELAY_S)
    grace = server.get("shutdown_grace_s", DEFAULT_SHUTDOWN_GRACE_S)
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    need = drain + grace + SHUTDOWN_MARGIN_S
    check(
        tgps >= need,
        f"terminationGracePeriodSeconds {tgps} >= drain_delay_s {drain} + shutdown_grace_s {grace} + margin {SHUTDOWN_MARGIN_S} = {need:g}",
    )
    auth = cfg.get("auth", {})
    for key in ("jwks_file", "hs256_secret_file"):
        if key in auth:
            check_file(auth[key], f"auth.{key}")
    if "ca_file" in cfg.get("upstream", {}):
        check_file(cfg["upstream"]["ca_file"], "upstream.ca_file")
    cred = cfg.get("credentials", {}).get("file")
    if check(bool(cred), "credentials.file is set"):
        check_file(cred, "credentials.file", want_secret=True)
    clamd = cfg.get("scan", {}).get("clamd", "")
    if clamd.startswith("unix:"):
        # clamd's socket: on a volume the gateway shares with the container
        # whose clamd.conf puts it there, at a path the official image's
        # entrypoint waits for (else it gives up on clamd after 30 min).
        sock = clamd[len("unix:") :]
        loc = locate(sock)
        if check(loc is not None and loc[1] is not None, f"scan.clamd {sock} is on a mounted volume"):
            vol_name = loc[0]["name"]
            others = [
                (c, m)
                for c in pod.get("initContainers", []) + pod.get("containers", [])
                if c["name"] != GATEWAY
                for m in c.get("volumeMounts") or []
                if m["name"] == vol_name
            ]
            if check(len(others) == 1, f"one other container mounts volume {vol_name}"):
                c, m = others[0]
                conf = next(
                    (
                        volume_files(volumes[cm["name"]]).get(cm.get("subPath", ""), b"").decode()
                        for cm in c.get("volumeMounts") or []
                        if cm["mountPath"] == "/etc/clamav/clamd.conf" and cm["name"] in volumes
                    ),
                    "",
                )
                local = re.search(r"^LocalSocket\s+(\S+)", conf, re.M)
                there = posixpath.join(m["mountPath"], loc[2])
                check(
                    local is not None and local.group(1) == there,
                    f"{c['name']}: clamd.conf LocalSocket is {there}",
                    f"found {local.group(1) if local else None}",
                )
                check(
                    there in ("/run/clamav/clamd.sock", "/tmp/clamd.sock"),
                    f"{c['name']}: the socket {there} is where the image's entrypoint waits for it",
                )
    tmp = next((m for m in mounts if m["mountPath"].rstrip("/") == "/tmp"), None)
    tmpvol = volumes.get(tmp["name"]) if tmp else None
    check(
        tmpvol is not None and (tmpvol.get("emptyDir") or {}).get("sizeLimit") is not None,
        "/tmp (upload spool) is an emptyDir with a sizeLimit",
    )

    print("Selectors and policies:")
    check(labels_match(dep["spec"].get("selector"), pod_labels), "Deployment selector matches the pod labels")
    for t in pod.get("topologySpreadConstraints") or []:
        check(labels_match(t.get("labelSelector"), pod_labels), "topology spread selector matches the pod labels")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    check(len(pdbs) == 1, "one PodDisruptionBudget")
    for p in pdbs:
        check(
            labels_match(p["spec"].get("selector"), pod_labels), "PodDisruptionBudget selector matches the pod labels"
        )
        spec = p["spec"]
        check(
            ("minAvailable" in spec) != ("maxUnavailable" in spec),
            "PodDisruptionBudget sets exactly one of minAvailable / maxUnavailable",
        )
    nps = by_kind.get("NetworkPolicy", [])
    check(len(nps) == 1, "one NetworkPolicy")
    for np in nps:
        spec = np["spec"]
        check(labels_match(spec.get("podSelector"), pod_labels), "NetworkPolicy podSelector matches the pod labels")
        check(
            set(spec.get("policyTypes") or []) == {"Ingress", "Egress"},
            "NetworkPolicy governs Ingress and Egress",
        )
        ingress_ports = {
            (p.get("protocol", "TCP"), p.get("port")) for r in spec.get("ingress") or [] for p in r.get("ports") or []
        }
        check(
            all(r.get("ports") for r in spec.get("ingress") or []),
            "every ingress rule names its ports",
        )
        check(("TCP", admin_port) in ingress_ports, f"ingress allows the admin port {admin_port}")
        check(("TCP", listen_port) not in ingress_ports, f"ingress does not open the proxy port {listen_port}")
        egress_ports = {
            (p.get("protocol", "TCP"), p.get("port")) for r in spec.get("egress") or [] for p in r.get("ports") or []
        }
        check(
            all(r.get("ports") for r in spec.get("egress") or []) and egress_ports <= ALLOWED_EGRESS,
            "egress only to DNS (53/UDP, 53/TCP) and HTTPS (443/TCP)",
            f"found {sorted(egress_ports)}",
        )

    if binary:
        print(f"{GATEWAY} check-config on the pod's files ({binary}):")
        with tempfile.TemporaryDirectory(prefix="concur-gateway-pod-") as root:
            # Lay out every ConfigMap/Secret mount of the gateway under root.
            for m in mounts:
                vol = volumes.get(m["name"]) or {}
                files = volume_files(vol)
                if files is None:
                    continue
                base = root + m["mountPath"]
                for name, data in files.items():
                    if m.get("subPath") and name != m["subPath"]:
                        continue
                    dest = base if m.get("subPath") else posixpath.join(base, name)
                    os.makedirs(posixpath.dirname(dest), exist_ok=True)
                    with open(dest, "wb") as f:
                        f.write(data)
            # Point the config's absolute paths at the copies (longest mount first).
            conf = root + config_path
            with open(conf, encoding="utf-8") as f:
                text = f.read()
            # One pass over the quoted strings, so a path is never prefixed twice.
            file_mounts = [
                m["mountPath"].rstrip("/") + "/"
                for m in mounts
                if volume_files(volumes.get(m["name"]) or {}) is not None
            ]
            text = re.sub(
                r"([\"'])(/[^\"'\n]*)",
                lambda g: g[1] + (root if any(g[2].startswith(mp) for mp in file_mounts) else "") + g[2],
                text,
            )
            with open(conf, "w", encoding="utf-8") as f:
                f.write(text)
            r = subprocess.run([binary, "check-config", "--config", conf], capture_output=True, text=True)
            out = (r.stdout + r.stderr).replace(root, "").strip()
            for line in out.splitlines():
                print(f"       {line}")
            check(r.returncode == 0, "check-config accepts the config, JWKS and credentials", f"exit {r.returncode}")

    failed = sum(1 for ok, _ in results if not ok)
    print(f"  {len(results) - failed} checks ok, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
