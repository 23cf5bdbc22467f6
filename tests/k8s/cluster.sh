#!/usr/bin/env bash
# A real Kubernetes 1.20.2 cluster on this machine, for the Kubernetes backend's tests:
# the control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) and
# a kubelet whose pods run on this machine's Docker engine, all built from Debian's
# source package of Kubernetes (every dependency vendored; no registry needed).
#
#   tests/k8s/cluster.sh build        build once into the cache (a second call is instant)
#   tests/k8s/cluster.sh start DIR    start a cluster whose state lives in DIR; prints
#                                     the kubeconfig's path (DIR/kubeconfig)
#   tests/k8s/cluster.sh stop DIR     stop it and remove everything it made
#
# The cache lives outside the checkout: MAI_FLEET_K8S_CACHE, default
# /var/cache/mai-fleet/k8s-1.20.2 (the build takes about 7 minutes on 2 cores).
#
# The one change to upstream code: the kubelet asks Docker for a negative
# oom_score_adj (-998 for the pod sandbox, -997 for Guaranteed pods), which a
# sandboxed machine refuses; both constants are set to 0 and the kubelet runs with
# --oom-score-adj=0.
set -euo pipefail

VERSION=1.20.2
CACHE=${MAI_FLEET_K8S_CACHE:-/var/cache/mai-fleet/k8s-$VERSION}
BIN=$CACHE/bin
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
PAUSE_IMAGE=k8s.gcr.io/pause:3.2

say() { echo "cluster.sh: $*" >&2; }
die() { say "$*"; exit 1; }

built() {
  for b in "${BINARIES[@]}"; do [ -x "$BIN/$b" ] || return 1; done
  [ -f "$CACHE/pause.tar" ] && command -v etcd >/dev/null
}

build() {
  if built; then
    say "built already in $CACHE"
    load_pause
    return
  fi
  [ "$(id -u)" = 0 ] || die "building needs root (apt-get)"
  mkdir -p "$CACHE"
  # Debian's source package and the toolchain, all from Debian.
  if [ ! -f /etc/apt/sources.list.d/mai-fleet-src.sources ]; then
    cat > /etc/apt/sources.list.d/mai-fleet-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    golang-1.19-go golang-github-modern-go-reflect2-dev etcd-server gcc libc6-dev \
    dpkg-dev openssl iproute2 >/dev/null
  local src=$CACHE/src
  if [ ! -d "$src/kubernetes" ]; then
    rm -rf "$src" && mkdir -p "$src"
    (cd "$src" && apt-get source -qq --download-only kubernetes >/dev/null)
    local dsc
    dsc=$(ls "$src"/kubernetes_*.dsc | head -1)
    (cd "$src" && dpkg-source --no-check -x "$dsc" kubernetes-tree >/dev/null)
    mv "$src/kubernetes-tree" "$src/kubernetes"
  fi
  local k=$src/kubernetes
  # reflect2 1.0.1 (vendored) panics under Go >= 1.18: Debian's 1.0.2 replaces it.
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  rm -f "$k"/vendor/github.com/modern-go/reflect2/*.go "$k"/vendor/github.com/modern-go/reflect2/*.s
  cp "$r2"/*.go "$k/vendor/github.com/modern-go/reflect2/"
  if ls "$r2"/*.s >/dev/null 2>&1; then cp "$r2"/*.s "$k/vendor/github.com/modern-go/reflect2/"; fi
  rm -f "$k"/vendor/github.com/modern-go/reflect2/*_test.go
  # The sandbox refuses a negative oom_score_adj (see the header).
  sed -i 's/defaultSandboxOOMAdj int = -998/defaultSandboxOOMAdj int = 0/' \
    "$k/pkg/kubelet/dockershim/docker_sandbox.go"
  sed -i 's/guaranteedOOMScoreAdj int = -997/guaranteedOOMScoreAdj int = 0/' \
    "$k/pkg/kubelet/qos/policy.go"
  grep -q 'defaultSandboxOOMAdj int = 0' "$k/pkg/kubelet/dockershim/docker_sandbox.go" ||
    die "the sandbox OOM constant was not found to patch"
  grep -q 'guaranteedOOMScoreAdj int = 0' "$k/pkg/kubelet/qos/policy.go" ||
    die "the Guaranteed pods' OOM constant was not found to patch"

  # GOPATH mode, as Kubernetes 1.20's own scripts build it.
  local gopath=$src/.go
  mkdir -p "$gopath/src/k8s.io"
  ln -sfn "$k" "$gopath/src/k8s.io/kubernetes"
  export GOPATH=$gopath GO111MODULE=off CGO_ENABLED=0 GOFLAGS= GOCACHE=$CACHE/gocache
  export PATH=/usr/lib/go-1.19/bin:$PATH
  cd "$gopath/src/k8s.io/kubernetes"
  if [ ! -f pkg/generated/openapi/zz_generated.openapi.go ]; then
    say "generating pkg/generated/openapi (missing from the tarball)"
    go build -o "$CACHE/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    local inputs
    inputs=$(
      { find pkg cmd plugin -name '*.go' -print0
        find -L vendor/k8s.io -path vendor/k8s.io/code-generator -prune -o \
          -path vendor/k8s.io/sample-apiserver -prune -o -name '*.go' -print0
      } | xargs -0 grep -l '+k8s:openapi-gen=' | xargs -n1 dirname | sort -u |
        sed 's|^|k8s.io/kubernetes/|' | paste -sd, -
    )
    "$CACHE/openapi-gen" -i "$inputs" -p k8s.io/kubernetes/pkg/generated/openapi \
      -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
      -r "$CACHE/openapi-report.txt" >/dev/null 2>&1 ||
      die "openapi-gen failed"
  fi
  local pkg=k8s.io/kubernetes/vendor/k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=v$VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
  mkdir -p "$BIN"
  for b in "${BINARIES[@]}"; do
    [ -x "$BIN/$b" ] && continue
    say "building $b"
    go build -ldflags "$ldflags" -o "$BIN/$b.part" "./cmd/$b" && mv "$BIN/$b.part" "$BIN/$b"
  done
  # The pod sandbox image, from the same tarball.
  local p=$CACHE/pause-build
  mkdir -p "$p"
  gcc -Os -static -o "$p/pause" build/pause/linux/pause.c
  printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' > "$p/Dockerfile"
  docker build -q -t "$PAUSE_IMAGE" "$p" >/dev/null
  docker save "$PAUSE_IMAGE" -o "$CACHE/pause.tar"
  say "built into $CACHE"
}

load_pause() {
  docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1 || docker load -q -i "$CACHE/pause.tar" >/dev/null
}

# Addresses and ports of the cluster: one per machine at a time (the tests share it).
# Ports stay below 20000: the e2e tests give their dashboards and tenants 20000-31999.
NETNS=maik8s
NODE_IP=10.231.0.1
PEER_IP=10.231.0.2
ETCD_PORT=12379
ETCD_PEER_PORT=12380
API_PORT=16443
NODE_NAME=mai-k8s-node
SERVICE_RANGE=10.232.0.0/24

pids_of() { cat "$1"/pids/*.pid 2>/dev/null || true; }

start() {
  local dir=${1:?usage: start DIR}
  built || die "not built: run $0 build first"
  load_pause
  mkdir -p "$dir"/{pids,logs,pki,etcd,kubelet,kubelet-certs}
  dir=$(cd "$dir" && pwd)
  local pki=$dir/pki
  # The node's address: the kubelet refuses loopback, and the apiserver must reach
  # it (logs, exec). A veth pair into a namespace of ours gives this machine an
  # address that is no one else's.
  if ! ip netns list | grep -qw "$NETNS"; then
    ip netns add "$NETNS"
    ip link add maik8s0 type veth peer name maik8s1
    ip link set maik8s1 netns "$NETNS"
    ip addr add "$NODE_IP/24" dev maik8s0
    ip link set maik8s0 up
    ip netns exec "$NETNS" ip addr add "$PEER_IP/24" dev maik8s1
    ip netns exec "$NETNS" ip link set maik8s1 up
  fi
  # Certificates: a CA, the apiserver's serving certificate (127.0.0.1 in its SANs:
  # rustls refuses an IP that is not), the service-account key pair, and a static
  # admin token (group system:masters).
  if [ ! -f "$pki/ca.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=mai-k8s-ca \
      -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
      -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.232.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n' \
      "$NODE_IP" > "$pki/san.ext"
    openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
      -CAcreateserial -days 30 -extfile "$pki/san.ext" -out "$pki/apiserver.crt" 2>/dev/null
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$pki/admin.token"
    printf '%s,admin,admin,system:masters\n' "$(cat "$pki/admin.token")" > "$pki/tokens.csv"
    chmod 600 "$pki"/*.key "$pki/tokens.csv" "$pki/admin.token"
  fi
  kubeconfig "$dir/kubeconfig" "$(cat "$pki/admin.token")" "$pki/ca.crt"

  run etcd "$dir" etcd --name mai-k8s --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "mai-k8s=http://127.0.0.1:$ETCD_PEER_PORT"
  run kube-apiserver "$dir" "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" \
    --authorization-mode Node,RBAC \
    --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range "$SERVICE_RANGE" \
    --kubelet-preferred-address-types InternalIP
  wait_for "the apiserver" 60 "$BIN/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz
  run kube-controller-manager "$dir" "$BIN/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig" --service-account-private-key-file "$pki/sa.key" \
    --root-ca-file "$pki/ca.crt" --leader-elect=false --secure-port=0 --port=0 \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service,-route'
  run kube-scheduler "$dir" "$BIN/kube-scheduler" \
    --kubeconfig "$dir/kubeconfig" --leader-elect=false --secure-port=0 --port=0
  # 250 pods (110 by default): the benchmark runs 100 tenants twice on the one node.
  run kubelet "$dir" "$BIN/kubelet" \
    --kubeconfig "$dir/kubeconfig" \
    --container-runtime=docker --docker-endpoint=unix:///var/run/docker.sock \
    --cgroup-driver=cgroupfs --fail-swap-on=false --cgroups-per-qos=false \
    --enforce-node-allocatable= --pod-infra-container-image="$PAUSE_IMAGE" \
    --root-dir="$dir/kubelet" --cert-dir="$dir/kubelet-certs" \
    --read-only-port=0 --healthz-port=0 --oom-score-adj=0 \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --address="$NODE_IP" \
    --eviction-hard='memory.available<1Mi,nodefs.available<1%,imagefs.available<1%' \
    --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
    --max-pods=250
  wait_for "node $NODE_NAME Ready" 120 node_ready "$dir"
  echo "$dir/kubeconfig"
}

node_ready() {
  "$BIN/kubectl" --kubeconfig "$1/kubeconfig" get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True
}

kubeconfig() {
  local path=$1 token=$2 ca=$3
  cat > "$path" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mai-k8s
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 < "$ca")
users:
- name: admin
  user:
    token: $token
contexts:
- name: mai-k8s
  context: {cluster: mai-k8s, user: admin}
current-context: mai-k8s
EOF
  chmod 600 "$path"
}

# Starts a component in the background, its output in DIR/logs, its pid in DIR/pids.
run() {
  local name=$1 dir=$2
  shift 2
  setsid "$@" > "$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$dir/pids/$name.pid"
}

wait_for() {
  local what=$1 seconds=$2
  shift 2
  local until=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || die "$what: not within ${seconds}s (see the logs/ of the cluster's directory)"
    sleep 1
  done
}

stop() {
  local dir=${1:?usage: stop DIR}
  if [ -d "$dir" ]; then
    local pid
    for pid in $(pids_of "$dir"); do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
      local alive=0
      for pid in $(pids_of "$dir"); do kill -0 "$pid" 2>/dev/null && alive=1; done
      [ $alive = 0 ] && break
      sleep 0.2
    done
    for pid in $(pids_of "$dir"); do kill -9 "$pid" 2>/dev/null || true; done
    # The kubelet bind-mounts its root dir onto itself (and pods' volumes in it).
    grep " $dir/kubelet" /proc/mounts | awk '{print $2}' | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$dir"
  fi
  # What the kubelet left on the engine: its pods' containers.
  local left
  left=$(docker ps -aq --filter name='^k8s_' 2>/dev/null || true)
  [ -z "$left" ] || docker rm -f $left >/dev/null 2>&1 || true
  if ip netns list | grep -qw "$NETNS"; then ip netns delete "$NETNS" 2>/dev/null || true; fi
  ip link delete maik8s0 2>/dev/null || true
}

case "${1:-}" in
  build) build ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) die "usage: $0 build | start DIR | stop DIR" ;;
esac
