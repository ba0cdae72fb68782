#!/usr/bin/env bash
# Checks the deployment files under ops/ (run by scripts/test.sh after `cargo build --bins`):
#   - each Kubernetes kustomization (ops/kubernetes, its base and overlays/shared) renders with
#     `kubectl kustomize`, and every object it renders passes kubernetes-validate (strict);
#   - the rendered objects agree with each other and with the config they mount (probes and
#     scrape annotations on the admin port with its token, the config mounted where the
#     container reads it, no fixed node_id, the shared config's Redis served by the overlay);
#   - the config each kustomization mounts passes `tollgate check`, as a pod would run it:
#     with a pod's hostname (its node_id) and the upstream Service names resolvable;
#   - the systemd unit passes `systemd-analyze verify`, with no warning about it.
# Installs what is missing: kubectl and systemd (Debian), kubernetes-validate (PyPI, in a
# virtual environment under target/). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# The Kubernetes version the objects are validated against (kubernetes-validate's schemas).
K8S_VERSION=1.32.0
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
VENV=target/ops-venv
BIN=$PWD/target/debug/tollgate
# A name as Kubernetes gives a Deployment's pod, and so its hostname.
POD_NAME=tollgate-6d5f8b7c9d-x2k7q

[ -x "$BIN" ] || { echo "ops_check: $BIN is missing: run cargo build --bins first" >&2; exit 1; }

# kubectl 1.21 or later renders the kustomizations (directories in a kustomization's
# resources, as the overlay's ../../base, need it). Debian releases that package `kubectl` get
# it installed; Debian 12 has only kubernetes-client 1.20, which cannot: there, and wherever
# no such kubectl can be had, the Kubernetes part is skipped with a line that says so, and the
# systemd part still runs. (The registries this project's machines reach carry no kubectl.)
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
if ! command -v kubectl >/dev/null 2>&1; then
  $sudo apt-get update -qq
  if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    ensure kubectl:kubectl
  fi
fi
k8s=1
minor=$(kubectl version --client 2>/dev/null | grep -o 'v1\.[0-9]*' | head -1 | cut -d. -f2)
if [ "${minor:-0}" -lt 21 ]; then
  k8s=0
fi
ensure systemd-analyze:systemd python3:python3 unshare:util-linux hostname:hostname
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "== installing: python3-venv"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
fi
if [ "$k8s" = 1 ] && [ "$("$VENV/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" != "${KUBERNETES_VALIDATE#*==}" ]; then
  echo "== installing: $KUBERNETES_VALIDATE (in $VENV)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$KUBERNETES_VALIDATE"
fi
PY=$VENV/bin/python

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-ops.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Renders one kustomization; anything kustomize prints besides the objects (a deprecated
# field, say) fails the check.
render() {
  local dir=$1 out=$2
  if ! kubectl kustomize "$dir" >"$out" 2>"$out.err" || [ -s "$out.err" ]; then
    echo "FAIL: kubectl kustomize $dir" >&2
    cat "$out.err" >&2
    return 1
  fi
}

# Checks the rendered objects of one kustomization against each other and writes the config
# it mounts to $3 and the upstream host names (one a line) to $4.
check_objects() {
  "$PY" - "$@" <<'EOF'
import ipaddress, json, sys, yaml

rendered, mode, config_out, hosts_out = sys.argv[1:5]
objs = [o for o in yaml.safe_load_all(open(rendered)) if o]
errors = []

def find(kind, pred=lambda o: True):
    return [o for o in objs if o["kind"] == kind and pred(o)]

def named(kind, name):
    found = find(kind, lambda o: o["metadata"]["name"] == name)
    if len(found) != 1:
        errors.append(f"expected one {kind} {name}, found {len(found)}")
        return None
    return found[0]

def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())

dep = named("Deployment", "tollgate")
if dep is None:
    sys.exit("\n".join(errors))
spec = dep["spec"]
pod = spec["template"]
if spec.get("replicas") != 3:
    errors.append(f"Deployment tollgate: replicas {spec.get('replicas')}, expected 3")
if not selects(spec["selector"]["matchLabels"], pod["metadata"]["labels"]):
    errors.append("Deployment tollgate: its selector does not match its pod labels")
if "hostname" in pod["spec"] or "subdomain" in pod["spec"]:
    errors.append("Deployment tollgate: spec.hostname/subdomain set: the pods would not take their own names as node_id")
(c,) = [c for c in pod["spec"]["containers"] if c["name"] == "tollgate"]
if c["image"] != "tollgate:latest":
    errors.append(f"container tollgate: image {c['image']}, expected tollgate:latest")
args = c.get("args", [])
config_path = args[args.index("-c") + 1] if "-c" in args else "conf/tollgate.json"

# The config: the ConfigMap volume mounted at the path given to -c, generated with a hash.
mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == config_path]
if len(mounts) != 1:
    sys.exit(f"container tollgate: nothing mounted at {config_path}, the path of -c")
m = mounts[0]
(vol,) = [v for v in pod["spec"]["volumes"] if v["name"] == m["name"]]
cm_name = vol["configMap"]["name"]
if not cm_name.startswith("tollgate-config-"):
    errors.append(f"config volume: ConfigMap {cm_name} has no content hash suffix (no rollout on change)")
cm = named("ConfigMap", cm_name)
key = m.get("subPath", config_path.rsplit("/", 1)[-1])
text = cm["data"][key]
open(config_out, "w").write(text)
try:
    config = json.loads(text)
except ValueError as e:
    sys.exit(f"ConfigMap {cm_name}: {key} is not JSON: {e}")

if "node_id" in config:
    errors.append("config: node_id is set: every pod would have the same one (leave it out: the pod name is used)")
admin_port = int(config["admin"]["address"].rsplit(":", 1)[1])
token = config["admin"].get("token")
ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}

def port_number(p):
    return ports.get(p) if isinstance(p, str) else p

for probe in ("readinessProbe", "livenessProbe"):
    get = c.get(probe, {}).get("httpGet")
    if not get or get.get("path") != "/health" or port_number(get.get("port")) != admin_port:
        errors.append(f"{probe}: expected GET /health on the admin port {admin_port}")
        continue
    headers = {h["name"].lower(): h["value"] for h in get.get("httpHeaders", [])}
    if token and headers.get("authorization") != f"Bearer {token}":
        errors.append(f"{probe}: its Authorization header does not carry the config's admin token")

ann = pod["metadata"].get("annotations", {})
want = {"prometheus.io/scrape": "true", "prometheus.io/port": str(admin_port), "prometheus.io/path": "/metrics"}
for k, v in want.items():
    if ann.get(k) != v:
        errors.append(f"pod annotation {k}: {ann.get(k)!r}, expected {v!r}")

listen_ports = {int(l["address"].rsplit(":", 1)[1]) for l in config["listeners"]}
svc = named("Service", "tollgate")
if svc:
    if not selects(svc["spec"]["selector"], pod["metadata"]["labels"]):
        errors.append("Service tollgate does not select the gateway pods")
    for p in svc["spec"]["ports"]:
        if port_number(p.get("targetPort", p["port"])) not in listen_ports:
            errors.append(f"Service tollgate: port {p['port']} does not reach a listener of the config")
pdb = named("PodDisruptionBudget", "tollgate")
if pdb and not selects(pdb["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]):
    errors.append("PodDisruptionBudget tollgate does not select the gateway pods")

def served(host, port, what):
    """A Service of this render named host, on port, with a Deployment behind it."""
    s = find("Service", lambda o: o["metadata"]["name"] == host.split(".")[0])
    if not s:
        errors.append(f"{what}: no Service {host} in the render")
        return
    s = s[0]
    if port not in [p["port"] for p in s["spec"]["ports"]]:
        errors.append(f"{what}: Service {host} has no port {port}")
    if not find("Deployment", lambda o: selects(s["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"])):
        errors.append(f"{what}: no Deployment behind Service {host}")

hosts = set()
for name, u in config["upstreams"].items():
    for server in u["servers"]:
        host, port = server.rsplit(":", 1)
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            hosts.add(host)
            served(host, int(port), f"upstream {name}")
open(hosts_out, "w").write("".join(h + "\n" for h in sorted(hosts)))

redis = config.get("redis")
if mode == "shared":
    if not redis or "url" not in redis:
        errors.append("shared: the config has no redis.url")
    else:
        rest = redis["url"].split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        host, _, port = rest.partition(":")
        served(host, int(port or 6379), "redis.url")
elif redis:
    errors.append("standalone: the config has a redis section")

if errors:
    sys.exit("\n".join(errors))
print(f"  {len(objs)} objects agree; config {config_path} from ConfigMap {cm_name}")
EOF
}

# `tollgate check` on a mounted config, as in a pod: the hostname is the pod's name (and so
# the node_id, the config having none), and the upstream Service names resolve (here to
# 127.0.0.1: check resolves them and connects nowhere). Without the privilege to make a mount
# and hostname namespace, the names are replaced by 127.0.0.1 and the node is this machine's
# hostname.
check_config() {
  local config=$1 hosts=$2 out expect
  if unshare --mount --uts true 2>/dev/null; then
    { cat /etc/hosts; sed 's/^/127.0.0.1 /' "$hosts"; } >"$config.hosts"
    # shellcheck disable=SC2016 # expanded by the inner shell, from its arguments
    out=$(unshare --mount --uts sh -c '
      mount --bind "$1" /etc/hosts && hostname "$2" && exec "$3" check -c "$4"' \
      sh "$config.hosts" "$POD_NAME" "$BIN" "$config" 2>&1) || { echo "$out" >&2; return 1; }
    expect=$POD_NAME
  else
    "$PY" - "$config" "$hosts" <<'EOF'
import json, sys
path, hosts = sys.argv[1], set(open(sys.argv[2]).read().split())
c = json.load(open(path))
for u in c["upstreams"].values():
    u["servers"] = [("127.0.0.1:" + s.rsplit(":", 1)[1]) if s.rsplit(":", 1)[0] in hosts else s for s in u["servers"]]
json.dump(c, open(path, "w"))
EOF
    out=$("$BIN" check -c "$config" 2>&1) || { echo "$out" >&2; return 1; }
    expect=$(uname -n)
  fi
  echo "  $out"
  case "$out" in
    *"ok (node $expect,"*) ;;
    *) echo "FAIL: node_id is not the hostname $expect" >&2; return 1 ;;
  esac
}

if [ "$k8s" = 1 ]; then
echo "== kubernetes: render, validate (kubernetes $K8S_VERSION, strict), tollgate check"
render ops/kubernetes "$tmp/top.yaml"
render ops/kubernetes/base "$tmp/base.yaml"
cmp -s "$tmp/top.yaml" "$tmp/base.yaml" || { echo "FAIL: ops/kubernetes does not render as its base" >&2; exit 1; }
for k in base:ops/kubernetes/base shared:ops/kubernetes/overlays/shared; do
  name=${k%%:*} dir=${k#*:}
  echo "-- $dir"
  [ -f "$tmp/$name.yaml" ] || render "$dir" "$tmp/$name.yaml"
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$tmp/$name.yaml"
  mode=standalone; [ "$name" = shared ] && mode=shared
  check_objects "$tmp/$name.yaml" "$mode" "$tmp/$name.json" "$tmp/$name.hosts"
  check_config "$tmp/$name.json" "$tmp/$name.hosts"
done
# The overlay's config is the base's with a redis section, and nothing else changed.
"$PY" - "$tmp/base.json" "$tmp/shared.json" <<'EOF'
import json, sys
base, shared = (json.load(open(p)) for p in sys.argv[1:3])
shared.pop("redis", None)
if base != shared:
    sys.exit("FAIL: overlays/shared/tollgate.json differs from base/tollgate.json beyond its redis section")
EOF
else
  echo "== kubernetes: SKIPPED: no kubectl 1.21 or later here (found: $(kubectl version --client 2>/dev/null | head -1 || echo none)); ops/kubernetes is not rendered or validated on this machine"
fi

echo "== systemd: systemd-analyze verify ops/systemd/tollgate.service"
# verify wants the ExecStart binary to exist: a copy of the unit runs the built one.
unit_dir=$tmp/systemd
mkdir -p "$unit_dir"
sed "s#/usr/local/bin/tollgate#$BIN#g" ops/systemd/tollgate.service >"$unit_dir/tollgate.service"
grep -q "^ExecStart=$BIN run -c /etc/tollgate/tollgate.json$" "$unit_dir/tollgate.service" ||
  { echo "FAIL: ExecStart is not /usr/local/bin/tollgate run -c /etc/tollgate/tollgate.json" >&2; exit 1; }
rc=0
out=$(systemd-analyze verify "$unit_dir/tollgate.service" 2>&1) || rc=$?
# Lines about other units on this machine are not ours to judge; any about this one fail.
about=$(printf '%s\n' "$out" | grep -e "tollgate.service" -e "$unit_dir" || true)
if [ "$rc" -ne 0 ] || [ -n "$about" ]; then
  echo "FAIL: systemd-analyze verify (exit $rc):" >&2
  printf '%s\n' "$out" >&2
  exit 1
fi
[ -z "$out" ] || printf '  (about other units: %s)\n' "$out"
echo "  ok"
echo "== ops check passed"
