# syntax=docker/dockerfile:1
# election-hub: the hub runs its TypeScript through tsx (a runtime dependency); the only build
# step is bundling the dashboard page (web/ + client/ → web/dist) with esbuild.

ARG NODE_IMAGE=node:20-bookworm-slim

# ---- deps: production node_modules only, from the lockfile ----
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund \
 && npm cache clean --force

# ---- web: bundle the dashboard page (needs the dev dependency esbuild) ----
FROM ${NODE_IMAGE} AS web
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY bin/ ./bin/
COPY scripts/ ./scripts/
COPY src/ ./src/
COPY client/ ./client/
COPY web/ ./web/
RUN node bin/run-ts.mjs scripts/build-web.ts

# ---- runtime ----
FROM ${NODE_IMAGE} AS runtime
WORKDIR /app
# Files stay owned by root and read-only to the process: the hub never writes its own code.
# tsx keeps its transform cache under the OS temp directory, which `node` can write.
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY bin/ ./bin/
COPY sql/ ./sql/
COPY src/ ./src/
COPY client/ ./client/
COPY --from=web /app/web/ ./web/

# The official image ships an unprivileged `node` user (uid 1000).
USER node

EXPOSE 8080

# slim has no curl: ask node's own fetch. /ready is 200 only while the database listener is
# connected (CONTRACT section 4), so an orchestrator stops routing to a hub that lost PostgreSQL.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8080) + '/ready').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# The hub installs its own SIGTERM/SIGINT handlers (ordered shutdown, close code 1001).
CMD ["node", "bin/election-hub.mjs", "serve"]
