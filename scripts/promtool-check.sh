#!/usr/bin/env bash
# Checks the Prometheus side of the operations files with promtool:
#   - prometheus/prometheus.yml (config, and the rule files it names)
#   - prometheus/alerts.yml (rule syntax) and prometheus/alerts.test.yml (alert unit tests)
#   - every PromQL expr in grafana/dashboards/*.json parses (Grafana variables substituted)
#   - with a FILE argument: `promtool check metrics < FILE`, a saved scrape of the hub's /metrics
#
# usage: scripts/promtool-check.sh [SCRAPE_FILE]
# PROMTOOL=/path/to/promtool overrides the binary. Without one, as root with apt, it installs Debian's
# `prometheus` package (which brings promtool; on a systemd host that also enables a Prometheus service).
# Exit status: 0 when every check passed, 1 when one failed, 2 when promtool is unavailable.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2

promtool=${PROMTOOL:-$(command -v promtool || true)}
if [ -z "$promtool" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "promtool not found: installing Debian's prometheus package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; }
    promtool=$(command -v promtool || true)
  fi
  if [ -z "$promtool" ]; then
    echo "promtool is not available and was not installed (needs root and apt-get)." >&2
    echo "Install it (Debian/Ubuntu: apt-get install prometheus) or set PROMTOOL=/path/to/promtool." >&2
    exit 2
  fi
fi
echo "using $("$promtool" --version 2>&1 | head -n 1)"

failed=()
check() {
  local name=$1
  shift
  echo "== $name"
  if "$@"; then return 0; fi
  failed+=("$name")
}

check "config prometheus/prometheus.yml" "$promtool" check config prometheus/prometheus.yml
check "rules prometheus/alerts.yml" "$promtool" check rules prometheus/alerts.yml
check "alert unit tests prometheus/alerts.test.yml" "$promtool" test rules prometheus/alerts.test.yml

# Dashboard queries: turn each expr into a recording rule so promtool parses it.
dashboard_rules() {
  node --input-type=module - "$@" <<'JS'
import { readFileSync } from 'node:fs';
const lines = ['groups:'];
for (const file of process.argv.slice(2)) {
  const exprs = [];
  const walk = (node) => {
    if (Array.isArray(node)) node.forEach(walk);
    else if (node && typeof node === 'object')
      for (const [k, v] of Object.entries(node)) k === 'expr' && typeof v === 'string' ? exprs.push(v) : walk(v);
  };
  walk(JSON.parse(readFileSync(file, 'utf8')));
  lines.push(`  - name: ${JSON.stringify(file)}`, '    rules:');
  exprs.forEach((expr, i) => {
    const promql = expr
      .replace(/\$__(rate_)?interval|\$__range/g, '1m')
      .replace(/\$\{[^}]*\}|\$[A-Za-z_]\w*/g, '.*');
    lines.push(`      - record: dashboard:expr_${i}`, `        expr: ${JSON.stringify(promql)}`);
  });
}
process.stdout.write(lines.join('\n') + '\n');
JS
}
shopt -s nullglob
dashboards=(grafana/dashboards/*.json)
if [ ${#dashboards[@]} -gt 0 ]; then
  if command -v node >/dev/null 2>&1; then
    tmp=$(mktemp --suffix=.yml)
    trap 'rm -f "$tmp"' EXIT
    if dashboard_rules "${dashboards[@]}" >"$tmp"; then
      check "dashboard queries ${dashboards[*]}" "$promtool" check rules "$tmp"
    else
      failed+=("dashboard queries (could not read the dashboards)")
    fi
  else
    echo "notice: node not found, dashboard queries not checked" >&2
  fi
fi

if [ $# -gt 0 ]; then
  scrape=$1
  # `check metrics` exits non-zero on lint problems (missing HELP, counters without _total, ...)
  # and prints one per line: each is worth fixing in the hub's metric definitions.
  check "metrics lint $scrape" "$promtool" check metrics <"$scrape"
fi

if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "all promtool checks passed"
