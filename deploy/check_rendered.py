"""Checks a rendered overlay (the output of `kubectl kustomize`) for what the
Kubernetes schemas cannot see: the invariants of deploy/README.md.

    python check_rendered.py <overlay name> <rendered.yaml>

- Every crm service: a Deployment running `crm serve <service>` with native
  gRPC startup/readiness/liveness probes on its `grpc` port, requests and
  limits, a non-root read-only security context without capabilities, its
  ServiceAccount, ConfigMap, Service (port named `grpc`) and
  PodDisruptionBudget.
- A service whose store is SQLite (no CRM_DATABASE_URL, or a sqlite:// one)
  runs exactly one replica: `replicas: 1`, Recreate rollouts, no autoscaler,
  its data directory on a ReadWriteOncePod claim, and the admission policy
  that refuses more replicas bound to its namespace.
- NetworkPolicies (when rendered) agree with the CRM_*_ADDR settings: a
  service reaches exactly the services it is configured to call, and is
  reached only by the gateway and those that follow its feed.

Exits non-zero with one line per violation.
"""

import sys

import yaml

STORE_OWNERS = {"identification", "differentiation", "interaction", "personalization"}
SERVICES = STORE_OWNERS | {"gateway"}
SQLITE_POLICY = "crm-sqlite-single-replica"


def main() -> int:
    overlay, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    errors: list[str] = []
    check = Checker(overlay, docs, errors)
    check.run()
    for e in errors:
        print(f"{overlay}: {e}")
    if errors:
        print(f"{overlay}: {len(errors)} problem(s)")
        return 1
    print(f"{overlay}: {check.summary}")
    return 0


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def selects(selector, labels) -> bool:
    """Whether a label selector (matchLabels only) selects `labels`."""
    if selector is None:
        return False
    if selector.get("matchExpressions"):
        raise ValueError("matchExpressions are not supported by this check")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


class Checker:
    def __init__(self, overlay, docs, errors):
        self.overlay = overlay
        self.docs = docs
        self.errors = errors
        self.summary = ""

    def fail(self, what: str) -> None:
        self.errors.append(what)

    def run(self) -> None:
        deployments = by_kind(self.docs, "Deployment")
        configmaps = by_kind(self.docs, "ConfigMap")
        crm = {}
        for name, d in deployments.items():
            for c in d["spec"]["template"]["spec"]["containers"]:
                args = c.get("args") or []
                if len(args) >= 2 and args[0] == "serve":
                    crm[args[1]] = (d, c)
        missing = SERVICES - crm.keys()
        if missing:
            self.fail(f"no Deployment serves {sorted(missing)}")
        sqlite = []
        for svc, (d, c) in sorted(crm.items()):
            env = self.environment(d, c, configmaps)
            self.check_workload(svc, d, c)
            if svc in STORE_OWNERS and self.is_sqlite(env):
                sqlite.append(svc)
                self.check_single_replica(svc, d, c, env)
        if "NetworkPolicy" in {d.get("kind") for d in self.docs}:
            self.check_network_policies(crm, configmaps)
            np = "network policies agree with CRM_*_ADDR"
        else:
            np = "no network policies"
        self.summary = (
            f"{len(crm)} services checked; single-replica SQLite: {', '.join(sqlite) or 'none'}; {np}"
        )

    def environment(self, d, c, configmaps):
        """The container's variables: name -> value, or ('secret', name, key)."""
        env = {}
        for src in c.get("envFrom") or []:
            ref = src.get("configMapRef")
            if ref:
                cm = configmaps.get(ref["name"])
                if cm is None:
                    self.fail(f"{d['metadata']['name']}: ConfigMap {ref['name']} is not rendered")
                    continue
                env.update(cm.get("data") or {})
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "valueFrom" in e and "secretKeyRef" in e["valueFrom"]:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = ("secret", ref["name"], ref["key"])
            else:
                env[e["name"]] = ("other",)
        return env

    @staticmethod
    def is_sqlite(env) -> bool:
        url = env.get("CRM_DATABASE_URL")
        return url is None or (isinstance(url, str) and url.startswith("sqlite:"))

    def check_workload(self, svc, d, c) -> None:
        name = d["metadata"]["name"]
        pod = d["spec"]["template"]["spec"]
        labels = d["spec"]["template"]["metadata"].get("labels") or {}
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        if "grpc" not in ports:
            self.fail(f"{name}: no container port named grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe) or {}
            if (p.get("grpc") or {}).get("port") != ports.get("grpc"):
                self.fail(f"{name}: {probe} is not a gRPC health probe on the grpc port")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(kind) or {}):
                    self.fail(f"{name}: no {r} {kind}")
        psc = pod.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            self.fail(f"{name}: pod does not require a non-root user")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            self.fail(f"{name}: seccomp profile is not RuntimeDefault")
        csc = c.get("securityContext") or {}
        if csc.get("allowPrivilegeEscalation") is not False:
            self.fail(f"{name}: privilege escalation allowed")
        if csc.get("readOnlyRootFilesystem") is not True:
            self.fail(f"{name}: root filesystem is writable")
        if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
            self.fail(f"{name}: capabilities not all dropped")
        sa = pod.get("serviceAccountName")
        if sa not in by_kind(self.docs, "ServiceAccount"):
            self.fail(f"{name}: ServiceAccount {sa} is not rendered")
        services = [s for s in by_kind(self.docs, "Service").values() if selects({"matchLabels": s["spec"].get("selector")}, labels)]
        if not any(p.get("name") == "grpc" for s in services for p in s["spec"].get("ports") or []):
            self.fail(f"{name}: no Service with a port named grpc selects it")
        if not any(selects(p["spec"].get("selector"), labels) for p in by_kind(self.docs, "PodDisruptionBudget").values()):
            self.fail(f"{name}: no PodDisruptionBudget selects it")

    def check_single_replica(self, svc, d, c, env) -> None:
        name = d["metadata"]["name"]
        spec = d["spec"]
        if spec.get("replicas") != 1:
            self.fail(f"{name}: SQLite store but replicas is {spec.get('replicas')!r}, not 1")
        if (spec.get("strategy") or {}).get("type") != "Recreate":
            self.fail(f"{name}: SQLite store but rollouts are not Recreate (two pods would share the file)")
        for hpa in by_kind(self.docs, "HorizontalPodAutoscaler").values():
            ref = hpa["spec"]["scaleTargetRef"]
            if ref.get("kind") == "Deployment" and ref.get("name") == name:
                self.fail(f"{name}: SQLite store but autoscaled by {hpa['metadata']['name']}")
        data_dir = env.get("CRM_DATA_DIR", "./data")
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts") or []}
        volume_name = mounts.get(str(data_dir).rstrip("/"))
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"].get("volumes") or []}
        claim = (volumes.get(volume_name) or {}).get("persistentVolumeClaim")
        if not claim:
            self.fail(f"{name}: SQLite data directory {data_dir} is not on a PersistentVolumeClaim")
        else:
            pvc = by_kind(self.docs, "PersistentVolumeClaim").get(claim["claimName"])
            if pvc is None:
                self.fail(f"{name}: claim {claim['claimName']} is not rendered")
            elif pvc["spec"].get("accessModes") != ["ReadWriteOncePod"]:
                self.fail(f"{name}: claim {claim['claimName']} is not ReadWriteOncePod")
        policy = by_kind(self.docs, "ValidatingAdmissionPolicy").get(SQLITE_POLICY)
        if policy is None or f"'{svc}'" not in str(policy["spec"].get("matchConditions")):
            self.fail(f"{name}: admission policy {SQLITE_POLICY} does not cover it")
        bindings = [b for b in by_kind(self.docs, "ValidatingAdmissionPolicyBinding").values() if b["spec"].get("policyName") == SQLITE_POLICY]
        namespace = by_kind(self.docs, "Namespace").get(d["metadata"].get("namespace", ""))
        ns_labels = (namespace or {}).get("metadata", {}).get("labels") or {}
        if not any(
            "Deny" in b["spec"].get("validationActions", [])
            and selects((b["spec"].get("matchResources") or {}).get("namespaceSelector"), ns_labels)
            for b in bindings
        ):
            self.fail(f"{name}: no Deny binding of {SQLITE_POLICY} selects its namespace")

    def check_network_policies(self, crm, configmaps) -> None:
        policies = list(by_kind(self.docs, "NetworkPolicy").values())
        pod_labels = {svc: d["spec"]["template"]["metadata"]["labels"] for svc, (d, _) in crm.items()}
        peers = {}
        for svc, (d, c) in crm.items():
            env = self.environment(d, c, configmaps)
            peers[svc] = set()
            for other in SERVICES:
                addr = env.get(f"CRM_{other.upper()}_ADDR")
                if isinstance(addr, str):
                    host = addr.split("://", 1)[-1].split(":", 1)[0]
                    peers[svc].add(host)

        def allowed(direction, svc):
            """The crm services `svc` may reach (egress) or be reached by (ingress)."""
            out = set()
            applies = [p for p in policies if selects(p["spec"]["podSelector"], pod_labels[svc]) and direction.capitalize() in p["spec"].get("policyTypes", [])]
            if not applies:
                return None  # not isolated
            for p in applies:
                for rule in p["spec"].get(direction) or []:
                    peers_key = "to" if direction == "egress" else "from"
                    if not rule.get(peers_key):
                        if direction == "egress":
                            return None  # to anywhere
                        out |= {s for s in SERVICES if s != svc}  # from anywhere
                        continue
                    for peer in rule[peers_key]:
                        if "ipBlock" in peer or ("namespaceSelector" in peer and "podSelector" not in peer):
                            continue
                        for other, labels in pod_labels.items():
                            if other != svc and selects(peer.get("podSelector"), labels):
                                out.add(other)
            return out

        for svc in crm:
            egress = allowed("egress", svc)
            if egress is None:
                self.fail(f"{svc}: egress is not restricted")
            elif egress != peers[svc]:
                self.fail(f"{svc}: may reach {sorted(egress)} but is configured to call {sorted(peers[svc])}")
            if svc == "gateway":
                continue
            ingress = allowed("ingress", svc)
            callers = {"gateway"} | {other for other, p in peers.items() if svc in p}
            if ingress is None:
                self.fail(f"{svc}: ingress is not restricted")
            elif ingress != callers:
                self.fail(f"{svc}: reachable from {sorted(ingress)}, callers are {sorted(callers)}")


if __name__ == "__main__":
    sys.exit(main())
