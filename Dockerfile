# syntax=docker/dockerfile:1
# election-hub: Node 24 on Debian 13 (trixie), whose glibc (>= 2.38) the Node 24 build of
# uWebSockets.js (@btc-vision/uwebsockets.js) needs. The hub runs the plain JavaScript that
# `npm run build` writes to dist/; nothing is transpiled at start.
#
# Build:  docker build -t election-hub .
# Behind a TLS-intercepting proxy, hand npm the proxy's CA bundle as a build secret (it is not
# kept in any layer):  docker build --secret id=npm_ca,src=/etc/ssl/certs/ca-certificates.crt .
# scripts/image-check.sh builds this file with buildah, without a registry, and runs the result.

# Any Debian 13 image with Node 24 and npm at /usr/local/bin (the official one by default).
ARG NODE_IMAGE=node:24-trixie-slim

# ---- build: dist/ (tsc) and the dashboard page web/dist (esbuild), with the dev dependencies ----
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=secret,id=npm_ca --mount=type=cache,target=/root/.npm \
    if [ -s /run/secrets/npm_ca ]; then export npm_config_cafile=/run/secrets/npm_ca; fi \
 && npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY bin/ ./bin/
COPY scripts/ ./scripts/
COPY src/ ./src/
COPY client/ ./client/
COPY web/ ./web/
RUN npm run build

# ---- deps: production node_modules only, with only this platform's uWebSockets.js binary ----
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
COPY scripts/prune-uws.mjs ./scripts/
RUN --mount=type=secret,id=npm_ca --mount=type=cache,target=/root/.npm \
    if [ -s /run/secrets/npm_ca ]; then export npm_config_cafile=/run/secrets/npm_ca; fi \
 && npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && node scripts/prune-uws.mjs node_modules

# ---- rootfs: what node needs to run, taken from Debian 13's own packages ----
# glibc, libgcc and libstdc++ (node's and uWS's shared libraries) with their dpkg records, the
# node binary, and an unprivileged account: no shell, no package manager, no npm.
FROM ${NODE_IMAGE} AS rootfs
RUN set -eu \
 && mkdir -p /rootfs/usr/local/bin /rootfs/etc /rootfs/var/lib/dpkg/status.d /rootfs/app /rootfs/home/node \
             /rootfs/proc /rootfs/sys /rootfs/dev /rootfs/run /rootfs/tmp \
 && for p in libc6 libgcc-s1 libstdc++6; do dpkg-query -s "$p" > "/rootfs/var/lib/dpkg/status.d/$p"; done \
 && dpkg-query -L libc6 libgcc-s1 libstdc++6 \
    | grep -v -e '^/usr/share/' -e '/gconv/' \
    | while read -r f; do if [ -f "$f" ] || [ -L "$f" ]; then printf '%s\n' "$f"; fi; done > /tmp/files \
 && tar -cf - --no-recursion -T /tmp/files /bin /lib /lib64 /sbin /etc/os-release /usr/lib/os-release | tar -xf - -C /rootfs \
 && cp /usr/local/bin/node /rootfs/usr/local/bin/node \
 && printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnode:x:1000:1000::/home/node:/usr/sbin/nologin\n' > /rootfs/etc/passwd \
 && printf 'root:x:0:\nnode:x:1000:\n' > /rootfs/etc/group \
 && printf 'passwd: files\ngroup: files\nhosts: files dns\n' > /rootfs/etc/nsswitch.conf \
 && chown 1000:1000 /rootfs/home/node && chmod 1777 /rootfs/tmp \
 && ldconfig -r /rootfs

# ---- runtime ----
FROM scratch AS runtime
COPY --from=rootfs /rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin NODE_ENV=production
WORKDIR /app
# Files stay owned by root and read-only to the process: the hub writes nothing to disk, so the
# container runs with a read-only root file system.
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/web/dist ./web/dist
COPY package.json ./
COPY bin/election-hub.mjs bin/node-support.mjs ./bin/
COPY sql/ ./sql/

USER node

EXPOSE 8080

# No curl in the image: ask node's own fetch. /ready is 200 only while the database listener is
# connected (CONTRACT section 4), so an orchestrator stops routing to a hub that lost PostgreSQL.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8080) + '/ready').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# The hub installs its own SIGTERM/SIGINT handlers (ordered shutdown, close code 1001).
CMD ["node", "bin/election-hub.mjs", "serve"]
