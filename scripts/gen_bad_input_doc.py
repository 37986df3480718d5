"""Write docs/bad-input.md from tests/bad_input_cases.py by running every case for real.

Run as root from the repo root: sudo .venv/bin/python scripts/gen_bad_input_doc.py
It creates two throwaway namespaces (prefix $AE_NS_TAG + ae9) and removes them.
"""

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'integration'))

import helpers  # noqa: E402
from bad_input_cases import CASES, PROXY_CASES, cell  # noqa: E402
from test_bad_input import make_namespaces, run_case, run_proxy_case  # noqa: E402


def main():
    factory = helpers.NamespaceFactory(helpers.ns_prefix('ae9'))
    rows = {}
    try:
        host, tenant = make_namespaces(factory)
        for module, args, param, _words in CASES:
            shown = dict((k, v) for k, v in args.items() if k != '_env')
            result, message = run_case(module, args, host, tenant)
            if not result.get('failed'):
                raise SystemExit('%s %s was accepted' % (module, args))
            env = args.get('_env')
            given = json.dumps(shown, sort_keys=True)
            if env:
                given += ' with ' + ', '.join('%s=%s' % kv for kv in env.items())
            rows.setdefault(module, []).append((param, given, message))
    finally:
        factory.cleanup()
    lines = [
        '# Bad input, refused',
        '',
        'Every module checks its whole input before it touches the kernel. Each row below is an input a',
        'module refuses and the message it gives, verbatim (HOST and TENANT stand for the namespaces the',
        'test used). Every row is a case of `tests/bad_input_cases.py`, run by',
        '`tests/integration/test_bad_input.py`, which also checks that the refusal changed nothing: routes,',
        'rules and nftables of both namespaces, the list of namespaces, and the persisted records are',
        'the same before and after; for `bgp_speaker` also the live BIRD configuration file and the running',
        'BIRD (its last reconfiguration). This file is generated: `sudo .venv/bin/python scripts/gen_bad_input_doc.py`.',
        '',
        '%d cases across %d modules.' % (len(CASES), len(rows)),
    ]
    for module in sorted(rows):
        lines += ['', '## %s' % module, '', '| parameter | input | message |', '|---|---|---|']
        for param, given, message in rows[module]:
            lines.append('| `%s` | `%s` | %s |' % (cell(param), cell(given), cell(message)))
    lines += [
        '', '## anycast-proxy configuration (the transparent_proxy role)', '',
        'The proxy refuses these configurations with `--check-config` (exit status 2), and a running proxy',
        'that gets one on SIGHUP keeps its running configuration (`config_reload_failures_total` grows). The',
        "role's preflight refuses them too, before anything changes on a host, with the same message naming",
        'the role variable: `routes` is `transparent_proxy_routes`, `defaults` is `transparent_proxy_route_defaults`',
        '(the `proxy_config_errors` filter runs the proxy\'s own validation). %d cases.' % len(PROXY_CASES),
        '', '| key | configuration | message |', '|---|---|---|']
    for config, key, _words in PROXY_CASES:
        status, message = run_proxy_case(config)
        if status != 2:
            raise SystemExit('the proxy accepted %s' % json.dumps(config))
        lines.append('| `%s` | `%s` | %s |' % (cell(key), cell(json.dumps(config, sort_keys=True)), cell(message)))
    with open(os.path.join(REPO, 'docs', 'bad-input.md'), 'w') as handle:
        handle.write('\n'.join(lines) + '\n')
    print('wrote docs/bad-input.md: %d module cases, %d proxy configuration cases' % (len(CASES), len(PROXY_CASES)))


if __name__ == '__main__':
    main()
