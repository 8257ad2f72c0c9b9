#!/usr/bin/env bash
# Provision a field kit: install popmesh, create its data directory, enroll it (a new site for the edge box, a
# join token for everything else), write the role's settings, start the service, and wait until the device is
# enrolled, synced and holds the show's media. Run as root on the box; see deploy/README.md.
#
#   provision.sh --role edge  --site "Harbour Pop-up" --name edge-1   [options]
#   provision.sh --role kiosk --token 'popmesh-join1....' --name kiosk-2 [options]
#
# Options:
#   --binary PATH        the popmesh binary to install (default: ./popmesh, else the one on PATH)
#   --bootstrap ADDR     a peer to dial besides mDNS, such as the edge box for the origin (repeatable)
#   --api ADDR           the local API address (default from the role's config: 127.0.0.1:7700)
#   --listen ADDR        the mesh's listen multiaddr (default /ip4/0.0.0.0/tcp/4701)
#   --media-port PORT    the blob endpoint's UDP port (default 4702)
#   --no-mdns            do not look for the site by mDNS (networks that block multicast)
#   --tls-listen ADDR    open the API's TLS listener for tablets and screens on the site LAN, such as
#                        0.0.0.0:7743; provisioning then prints the pairing code (and a QR code with qrencode)
#   --pair-host HOST     the address tablets reach this box at, for the pairing code (default: the TLS
#                        listener's own address, or this box's first address when it listens on all of them)
#   --wait SECS          how long to wait for enrollment and preseed (default 600)
#   --no-systemd         start `popmesh run` in the background instead of a systemd service (staging, tests)
#
# PROVISION_ROOT=DIR puts everything under DIR (DIR/usr/local/bin, DIR/var/lib/popmesh, DIR/etc/systemd/system),
# for staging an image or testing this script without touching the machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${PROVISION_ROOT:-}"
role="" site="" token="" name="" binary="" api="" listen="" media_port="" wait_secs=600 tls_listen="" pair_host=""
mdns=true systemd=true
bootstrap=()

die() { echo "provision.sh: $*" >&2; exit 2; }
say() { echo "== $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --role) role="${2:?--role needs a value}"; shift 2 ;;
    --site) site="${2:?--site needs a value}"; shift 2 ;;
    --token) token="${2:?--token needs a value}"; shift 2 ;;
    --name) name="${2:?--name needs a value}"; shift 2 ;;
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --bootstrap) bootstrap+=("${2:?--bootstrap needs an address}"); shift 2 ;;
    --api) api="${2:?--api needs an address}"; shift 2 ;;
    --listen) listen="${2:?--listen needs a multiaddr}"; shift 2 ;;
    --media-port) media_port="${2:?--media-port needs a port}"; shift 2 ;;
    --no-mdns) mdns=false; shift ;;
    --tls-listen) tls_listen="${2:?--tls-listen needs an address}"; shift 2 ;;
    --pair-host) pair_host="${2:?--pair-host needs a host}"; shift 2 ;;
    --wait) wait_secs="${2:?--wait needs seconds}"; shift 2 ;;
    --no-systemd) systemd=false; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

case "$role" in
  edge|kiosk|pos|origin) ;;
  "") die "--role is required: edge, kiosk, pos or origin" ;;
  *) die "--role $role: must be edge, kiosk, pos or origin" ;;
esac
[ -n "$name" ] || die "--name is required (this device's name, such as kiosk-2)"
if [ "$role" = edge ] && [ -z "$token" ]; then
  [ -n "$site" ] || die "--site is required for a new site's edge box (or give --token to join an existing site)"
else
  [ -n "$token" ] || die "--token is required: print one on the edge box with popmesh site invite --role $role"
fi
case "$wait_secs" in ''|*[!0-9]*) die "--wait $wait_secs: a number of seconds" ;; esac
config_template="$here/config/$role.toml"
[ -f "$config_template" ] || die "no example config $config_template"
if [ -z "$binary" ]; then
  if [ -x ./popmesh ]; then binary=./popmesh; else binary="$(command -v popmesh || true)"; fi
fi
[ -n "$binary" ] && [ -x "$binary" ] || die "no popmesh binary: build it (cargo build --release) and pass --binary PATH"
"$binary" --help >/dev/null 2>&1 || die "$binary does not run on this machine"
if $systemd; then
  [ "$(id -u)" = 0 ] || die "run as root to install the service (or --no-systemd for a user-run node)"
  command -v systemctl >/dev/null || die "no systemctl here: use --no-systemd and a supervisor of your own"
fi

bin="$root/usr/local/bin/popmesh"
data="$root/var/lib/popmesh"
unit_dir="$root/etc/systemd/system"
[ ! -e "$data/site.json" ] || die "$data already holds a device; remove it to provision again"

say "installing $binary as $bin"
install -d -m 0755 "$(dirname "$bin")"
install -m 0755 "$binary" "$bin"

if $systemd && ! id popmesh >/dev/null 2>&1; then
  say "creating the popmesh system user"
  useradd --system --home-dir /var/lib/popmesh --no-create-home --shell /usr/sbin/nologin popmesh
fi
install -d -m 0700 "$(dirname "$data")" 2>/dev/null || true

if [ -n "$token" ]; then
  say "enrolling $name with the join token"
  "$bin" join "$token" --data "$data" --name "$name"
else
  say "creating the site \"$site\" with $name as its edge box"
  "$bin" site init --data "$data" --name "$site" --role edge --device-name "$name"
fi

# The role's settings, keeping the token's bootstrap addresses and adding --bootstrap ones.
joined_bootstrap="$(sed -n 's/^bootstrap = \[\(.*\)\]$/\1/p' "$data/popmesh.toml" | head -n1)"
list="$joined_bootstrap"
for b in ${bootstrap[@]+"${bootstrap[@]}"}; do
  list="${list:+$list, }\"$b\""
done
config="$(sed "s|^bootstrap = \[\]|bootstrap = [$list]|" "$config_template")"
if [ -n "$api" ]; then config="$(printf '%s\n' "$config" | sed "/^\[api\]/,/^\[/ s|^listen = .*|listen = \"$api\"|")"; fi
if [ -n "$listen" ]; then config="$(printf '%s\n' "$config" | sed "/^\[p2p\]/,/^\[/ s|^listen = .*|listen = [\"$listen\"]|")"; fi
if [ -n "$media_port" ]; then config="$(printf '%s\n' "$config" | sed "/^\[media\]/,/^\[/ s|^port = .*|port = $media_port|")"; fi
if ! $mdns; then config="$(printf '%s\n' "$config" | sed 's|^mdns = true|mdns = false|')"; fi
if [ -n "$tls_listen" ]; then
  case "$tls_listen" in *[!0-9A-Za-z.:\[\]]*) die "--tls-listen $tls_listen: an address such as 0.0.0.0:7743" ;; esac
  config="$(printf '%s\n' "$config" | sed "/^\[api\]/a tls_listen = \"$tls_listen\"")"
fi
printf '%s\n' "$config" > "$data/popmesh.toml"
chmod 0600 "$data/popmesh.toml"
say "wrote $data/popmesh.toml from deploy/config/$role.toml"

if $systemd; then
  chown -R popmesh:popmesh "$data"
  install -d -m 0755 "$unit_dir"
  sed "s|/usr/local/bin/popmesh|$bin|; s|/var/lib/popmesh|$data|g" "$here/systemd/popmesh.service" \
    > "$unit_dir/popmesh.service"
  say "starting the popmesh service"
  systemctl daemon-reload
  systemctl enable --now popmesh.service
else
  say "starting popmesh run in the background (log: $data/popmesh.log)"
  nohup "$bin" run --data "$data" >>"$data/popmesh.log" 2>&1 </dev/null &
  echo $! > "$data/popmesh.pid"
fi

say "waiting for $name to be enrolled, synced and preseeded (up to ${wait_secs} s)"
deadline=$(( $(date +%s) + wait_secs ))
state=""
while :; do
  if status="$("$bin" status --data "$data" --json 2>/dev/null)"; then
    state="$(printf '%s' "$status" | tr -d '\n ' )"
    case "$state" in
      *'"enrolled":true'*'"directory_synced":true'*|*'"directory_synced":true'*'"enrolled":true'*)
        case "$state" in
          *'"completeness":1.0'*|*'"completeness":1,'*|*'"completeness":1}'*) break ;;
        esac ;;
    esac
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "provision.sh: $name is not ready after ${wait_secs} s; its last status:" >&2
    printf '%s\n' "${status:-no answer from the node}" >&2
    [ -f "$data/popmesh.log" ] && tail -n 20 "$data/popmesh.log" >&2
    exit 1
  fi
  sleep 1
done

device="$(printf '%s' "$state" | sed -n 's/^{"device":"\([0-9a-f]*\)".*/\1/p')"
api_addr="$(sed -n '/^\[api\]/,/^\[/ s/^listen = "\(.*\)"/\1/p' "$data/popmesh.toml")"
say "ready: $name ($role) ${device:+device $device}"
echo "   data:     $data"
echo "   console:  http://$api_addr/console"
echo "   rehearse: $bin rehearse --data $data"
if [ -n "$tls_listen" ]; then
  host="$pair_host"
  case "$tls_listen" in
    0.0.0.0:*|\[::\]:*) [ -n "$host" ] || host="$(hostname -I 2>/dev/null | awk '{print $1}')" ;;
  esac
  if code="$("$bin" pair --data "$data" ${host:+--host "$host"} 2>/dev/null)"; then
    echo "   pairing:  $code"
    echo "             (scan it on a tablet or screen; add a client token with: $bin pair --data $data --role pos)"
    if command -v qrencode >/dev/null; then qrencode -t ANSIUTF8 "$code"; else echo "             (install qrencode to show it as a QR code here)"; fi
  else
    echo "provision.sh: no pairing code: $("$bin" pair --data "$data" ${host:+--host "$host"} 2>&1 >/dev/null)" >&2
  fi
fi
