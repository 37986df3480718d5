"""What a playbook would do on one host of an inventory, worked out by Ansible itself without contacting it.

usage: python render_playbook.py PLAYBOOK INVENTORY HOST [VARS_JSON]

Ansible loads the playbook and the inventory as ansible-playbook does; for every play and every
task (blocks flattened, includes not followed) the task's `when` is evaluated and its arguments
templated with the host's variables, the task's and the play's, plus VARS_JSON (standing in for
extra vars, gathered facts and registered results, e.g. {"edge_installed_packages": {"packages":
{...}}, "ansible_check_mode": false}); a `set_fact` that runs sets its facts for the tasks after it, as it would. Prints JSON:
[{"name", "serial", "max_fail_percentage", "tasks": [{"name", "action", "runs", "args"}]}]; an
`assert` that runs also gets "false": its conditions that do not hold. Arguments of tasks that do
not run are not templated. A task with a loop runs when it runs for some item; it also gets
"items": [{"item", "runs", "args"}], each item's `when` and arguments.

A separate process: Ansible's plugin loader installs an import hook for ansible_collections that
the unit tests' own imports of the collection should not go through.
"""

import json
import sys

from ansible import context
from ansible.module_utils.common.collections import ImmutableDict
from ansible.plugins.loader import init_plugin_loader


def tasks_of(item):
    """The tasks of a block, nested blocks flattened."""
    if hasattr(item, 'block'):
        for part in item.block:
            yield from tasks_of(part)
    else:
        yield item


def render(playbook, inventory, host_name, extra):
    init_plugin_loader()
    from ansible.inventory.manager import InventoryManager  # pylint: disable=import-outside-toplevel
    from ansible.parsing.dataloader import DataLoader  # pylint: disable=import-outside-toplevel
    from ansible.playbook import Playbook  # pylint: disable=import-outside-toplevel
    from ansible.template import Templar  # pylint: disable=import-outside-toplevel
    from ansible.vars.manager import VariableManager  # pylint: disable=import-outside-toplevel

    context.CLIARGS = ImmutableDict(check=bool(extra.get('ansible_check_mode')), diff=False)
    loader = DataLoader()
    inventory_manager = InventoryManager(loader=loader, sources=[inventory])
    variables = VariableManager(loader=loader, inventory=inventory_manager)
    host = inventory_manager.get_host(host_name)
    plays = []
    facts = {}
    for play in Playbook.load(playbook, variable_manager=variables, loader=loader).get_plays():
        play_vars = dict(variables.get_vars(play=play, host=host), **extra)
        templar = Templar(loader=loader, variables=play_vars)
        rendered = {'name': play.get_name(), 'serial': templar.template(play.serial) if play.serial else None,
                    'max_fail_percentage': play.max_fail_percentage, 'tasks': []}
        for block in play.compile():
            for task in tasks_of(block):
                if task.action in ('meta', 'ansible.builtin.meta'):
                    continue
                task_vars = dict(variables.get_vars(play=play, host=host, task=task), **facts)
                task_vars.update(extra)
                templar = Templar(loader=loader, variables=task_vars)
                if task.loop is not None:
                    items = []
                    loop_var = task.loop_control.loop_var if task.loop_control else 'item'
                    for item in templar.template(task.loop):
                        item_templar = Templar(loader=loader, variables=dict(task_vars, **{loop_var: item}))
                        item_runs = all(item_templar.evaluate_conditional(c) for c in task.when)
                        items.append({'item': item, 'runs': item_runs,
                                      'args': item_templar.template(task.args) if item_runs else None})
                    rendered['tasks'].append({'name': task.get_name(), 'action': task.action,
                                              'runs': any(i['runs'] for i in items), 'args': None, 'items': items})
                    continue
                runs = all(templar.evaluate_conditional(condition) for condition in task.when)
                args = templar.template(task.args) if runs else None
                rendered['tasks'].append({'name': task.get_name(), 'action': task.action, 'runs': runs,
                                          'args': args})
                if runs and task.action in ('set_fact', 'ansible.builtin.set_fact'):
                    facts.update(args)
                if runs and task.action in ('assert', 'ansible.builtin.assert'):
                    that = args['that'] if isinstance(args['that'], list) else [args['that']]
                    rendered['tasks'][-1]['false'] = [c for c in that if not templar.evaluate_conditional(c)]
        plays.append(rendered)
    return plays


def main():
    playbook, inventory, host = sys.argv[1:4]
    extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    json.dump(render(playbook, inventory, host, extra), sys.stdout, default=str)


if __name__ == '__main__':
    main()
