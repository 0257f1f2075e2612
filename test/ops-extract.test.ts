// The metric-name extractor behind the dashboard/alert checks: pure, no services.
import { describe, expect, it } from 'vitest';
import { exprsInDashboard, exprsInRulesYaml, extractMetricNames, namesInExposition } from './support/metric-names.ts';

describe('extractMetricNames', () => {
  const cases: [string, string[]][] = [
    ['hub_connections', ['hub_connections']],
    ['hub_listener_connected == 0', ['hub_listener_connected']],
    ['up{job="election-hub"} == 0', ['up']],
    ['sum(hub_connections{instance=~"$instance"})', ['hub_connections']],
    ['sum by (role) (hub_connections_by_role)', ['hub_connections_by_role']],
    ['sum(rate(hub_events_total[5m])) by (kind, action)', ['hub_events_total']],
    ['SUM BY (kind) (RATE_NOT_A_KEYWORD)', ['RATE_NOT_A_KEYWORD']],
    [
      'histogram_quantile(0.99, sum by (instance, le) (rate(hub_event_delivery_lag_seconds_bucket[5m]))) > 1',
      ['hub_event_delivery_lag_seconds_bucket'],
    ],
    [
      'sum(rate(hub_dashboard_cache_requests_total{result="hit", instance=~"$instance"}[$__rate_interval])) / sum(rate(hub_dashboard_cache_requests_total[$__rate_interval]))',
      ['hub_dashboard_cache_requests_total'],
    ],
    [
      'hub_outbox_backlog_events > 1000 or (deriv(hub_outbox_backlog_events[5m]) > 0 and hub_outbox_backlog_events > 100)',
      ['hub_outbox_backlog_events'],
    ],
    ['a / on(instance) group_left(role) b', ['a', 'b']],
    ['a * ignoring (code) group_right b', ['a', 'b']],
    ['a unless b', ['a', 'b']],
    ['a > bool 1e-3', ['a']],
    ['a offset 1h30m', ['a']],
    ['rate(a[5m] @ start())', ['a']],
    ['max_over_time(a[1h:30s])', ['a']],
    ['topk(5, a) + bottomk(3, b) + quantile(0.9, c)', ['a', 'b', 'c']],
    ['count_values("version", build_info)', ['build_info']],
    ['label_replace(a, "dst", "$1 b{x}", "src", "(.*)")', ['a']],
    ['sum without (le) (x) + avg (y) + stddev(z) + count(w) + group(v)', ['v', 'w', 'x', 'y', 'z']],
    ['{__name__="named_by_matcher", job="x"}', ['named_by_matcher']],
    ['{__name__=~"regex_.*"}', []],
    ['vector(0) + time() + Inf + NaN + 0x1F', []],
    ['job:hub_events:rate5m', ['job:hub_events:rate5m']],
    ['a # a comment naming not_a_metric\n+ b', ['a', 'b']],
    ['rate (a[$__rate_interval]) * ${scale} + $offset_metric', ['a']],
    ["a{x='it\\'s'} + b{y=`raw}`}", ['a', 'b']],
    [
      'process_resident_memory_bytes + nodejs_eventloop_lag_p99_seconds',
      ['nodejs_eventloop_lag_p99_seconds', 'process_resident_memory_bytes'],
    ],
  ];
  it.each(cases)('%s', (expr, names) => {
    expect(extractMetricNames(expr)).toEqual(names);
  });
});

describe('exprsInDashboard', () => {
  it('finds every target expr, including panels inside collapsed rows', () => {
    const dashboard = {
      templating: { list: [{ query: { query: 'label_values(not_an_expr, instance)' } }] },
      panels: [
        { type: 'timeseries', targets: [{ expr: 'a' }, { expr: 'b', legendFormat: 'expr' }] },
        { type: 'row', collapsed: true, panels: [{ type: 'stat', targets: [{ expr: 'c' }] }] },
        { type: 'text', options: { content: 'expr' } },
      ],
    };
    expect(exprsInDashboard(dashboard)).toEqual(['a', 'b', 'c']);
  });
});

describe('exprsInRulesYaml', () => {
  it('reads plain, quoted and block-scalar exprs', () => {
    const text = [
      'groups:',
      '  - name: g',
      '    rules:',
      '      - alert: Plain',
      '        expr: up == 0   # trailing comment',
      '      - alert: Double',
      '        expr: "rate(a[5m]) > 1"',
      '      - alert: Single',
      '        expr: \'b{x="y"} > 0\'',
      '      - alert: Block',
      '        expr: |',
      '          sum by (le) (',
      '            c_bucket',
      '          )',
      '        for: 1m',
      '      - record: r',
      '        expr: >-',
      '          d',
      '          + e',
    ].join('\n');
    expect(exprsInRulesYaml(text)).toEqual([
      'up == 0',
      'rate(a[5m]) > 1',
      'b{x="y"} > 0',
      'sum by (le) (\nc_bucket\n)',
      'd + e',
    ]);
  });
});

describe('namesInExposition', () => {
  it('collects samples and declared families, with histogram series', () => {
    const text = [
      '# HELP hub_auth_failures_total Rejected authentications',
      '# TYPE hub_auth_failures_total counter',
      '# HELP hub_event_delivery_lag_seconds Commit to send',
      '# TYPE hub_event_delivery_lag_seconds histogram',
      'hub_event_delivery_lag_seconds_bucket{le="0.005"} 0',
      '# TYPE hub_connections gauge',
      'hub_connections 3',
      'job:x:rate5m{a="b"} 1',
      '',
    ].join('\n');
    const names = namesInExposition(text);
    for (const n of [
      'hub_auth_failures_total',
      'hub_event_delivery_lag_seconds',
      'hub_event_delivery_lag_seconds_bucket',
      'hub_event_delivery_lag_seconds_sum',
      'hub_event_delivery_lag_seconds_count',
      'hub_connections',
      'job:x:rate5m',
    ]) {
      expect(names.has(n), n).toBe(true);
    }
    expect(names.has('HELP')).toBe(false);
  });
});
