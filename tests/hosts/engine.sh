#!/usr/bin/env bash
# A Docker engine of its own in a network namespace of its own: a stand-in for one
# more server, for the e2e suite and the benchmarks.
#
#   engine.sh up NAME INDEX DIR [--tls CERTDIR] [--ssh AUTHORIZED_KEY_FILE]
#   engine.sh down NAME DIR
#   engine.sh sshd-stop NAME DIR | sshd-start NAME DIR
#
# `up` creates namespace mf-NAME joined to this machine by a veth pair
# (10.77.INDEX.1 here, 10.77.INDEX.2 inside), starts dockerd inside it with its own
# config, data root, exec root, pid file and socket on the vfs driver. dockerd runs in
# a mount namespace of its own whose /run is DIR/run: to it (and to the containers
# it makes, an agent mounting /var/run/docker.sock) its socket is
# /var/run/docker.sock, as on a real server; from here it is DIR/run/docker.sock.
# With --tls it also listens on tcp://10.77.INDEX.2:2376 requiring client
# certificates (CERTDIR/{ca,server,server-key}.pem); with --ssh an OpenSSH server
# listens on 10.77.INDEX.2:22 for root with that key, in a mount namespace where
# /var/run/docker.sock is this engine's socket (DIR/ssh_host_ed25519_key.pub is its
# host key). `down` undoes all of it and is safe to run twice.
set -euo pipefail
cmd=${1:?usage: engine.sh up|down|sshd-stop|sshd-start NAME ...}
name=${2:?name}
ns=mf-$name
veth=mfv-$name

sshd_start() {
  local dir=$1
  mkdir -p /run/sshd
  # nsenter keeps this machine's /sys; unshare gives sshd a private /var/run/docker.sock.
  nsenter --net=/var/run/netns/$ns unshare --mount --propagation private sh -c \
    "touch /var/run/docker.sock 2>/dev/null; mount --bind '$dir/run/docker.sock' /var/run/docker.sock && exec /usr/sbin/sshd -f '$dir/sshd_config' -E '$dir/sshd.log'"
  for _ in $(seq 1 50); do [ -s "$dir/sshd.pid" ] && return 0; sleep 0.1; done
  echo "sshd did not start: $(cat "$dir/sshd.log" 2>/dev/null)" >&2
  return 1
}

sshd_stop() {
  local dir=$1
  if [ -s "$dir/sshd.pid" ]; then kill "$(cat "$dir/sshd.pid")" 2>/dev/null || true; fi
  rm -f "$dir/sshd.pid"
  # Sessions forked by sshd outlive it: end them too, as a powered-off server would.
  for p in $(ip netns pids "$ns" 2>/dev/null); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = sshd ] && kill "$p" 2>/dev/null
  done
  true
}

case $cmd in
up)
  index=${3:?index}
  dir=${4:?dir}
  shift 4
  tls= ; ssh_key=
  while [ $# -gt 0 ]; do
    case $1 in
      --tls) tls=$2; shift 2 ;;
      --ssh) ssh_key=$2; shift 2 ;;
      *) echo "unknown option $1" >&2; exit 2 ;;
    esac
  done
  "$0" down "$name" "$dir" 2>/dev/null || true
  mkdir -p "$dir/run"
  here=10.77.$index.1
  there=10.77.$index.2
  ip netns add "$ns"
  ip link add "$veth" type veth peer name mfp-"$name"
  ip link set mfp-"$name" netns "$ns"
  ip addr add "$here/24" dev "$veth"
  ip link set "$veth" up
  ip -n "$ns" addr add "$there/24" dev mfp-"$name"
  ip -n "$ns" link set mfp-"$name" up
  ip -n "$ns" link set lo up
  ip -n "$ns" route add default via "$here"
  hosts=("unix:///run/docker.sock")
  tls_args=()
  if [ -n "$tls" ]; then
    hosts+=("tcp://$there:2376")
    tls_args=(--tlsverify --tlscacert "$tls/ca.pem" --tlscert "$tls/server.pem" --tlskey "$tls/server-key.pem")
  fi
  echo '{}' >"$dir/daemon.json"
  host_args=()
  for h in "${hosts[@]}"; do host_args+=(-H "$h"); done
  # /run inside is DIR/run (short paths inside: containerd's sockets stay under
  # 108 bytes).
  nsenter --net=/var/run/netns/$ns unshare --mount --propagation private sh -c \
    "mount --bind '$dir/run' /run && exec dockerd --config-file '$dir/daemon.json' \
      --data-root '$dir/data' --exec-root /run/docker --pidfile /run/dockerd.pid \
      --storage-driver vfs ${host_args[*]} ${tls_args[*]}" \
    >"$dir/dockerd.log" 2>&1 &
  for _ in $(seq 1 200); do
    docker -H "unix://$dir/run/docker.sock" version >/dev/null 2>&1 && break
    sleep 0.1
  done
  docker -H "unix://$dir/run/docker.sock" version >/dev/null 2>&1 || {
    echo "dockerd in $ns did not start:" >&2; tail -20 "$dir/dockerd.log" >&2; exit 1; }
  if [ -n "$ssh_key" ]; then
    [ -f "$dir/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh_host_ed25519_key"
    cp "$ssh_key" "$dir/authorized_keys"
    chmod 600 "$dir/authorized_keys"
    cat >"$dir/sshd_config" <<EOF
ListenAddress $there
Port 22
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowStreamLocalForwarding yes
EOF
    sshd_start "$dir"
  fi
  echo "engine $name: unix://$dir/run/docker.sock, address $there"
  ;;
down)
  dir=${3:?dir}
  sshd_stop "$dir"
  if [ -s "$dir/run/dockerd.pid" ]; then
    pid=$(cat "$dir/run/dockerd.pid")
    # Containers first, so nothing of theirs outlives the namespace.
    docker -H "unix://$dir/run/docker.sock" ps -aq 2>/dev/null |
      xargs -r docker -H "unix://$dir/run/docker.sock" rm -f >/dev/null 2>&1 || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # Whatever is left (an engine whose directory went first): containers run in
  # namespaces of their own, children of the shims in this one; they go first.
  for p in $(ip netns pids "$ns" 2>/dev/null); do
    case "$(cat "/proc/$p/comm" 2>/dev/null)" in
      containerd-shim*) pgrep -P "$p" | xargs -r kill -9 2>/dev/null || true ;;
    esac
  done
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip link del "$veth" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  if [ -d "$dir/data" ]; then
    for m in $(grep -o " $dir/data[^ ]*" /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$dir/data"
  fi
  ;;
sshd-stop) sshd_stop "${3:?dir}" ;;
sshd-start) sshd_start "${3:?dir}" ;;
*) echo "usage: engine.sh up|down|sshd-stop|sshd-start NAME ..." >&2; exit 2 ;;
esac
