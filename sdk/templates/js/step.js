// {{ name }}: refuses incidents without a category and routes the rest to the team the module
// config names for it.

import { step, reject, setFields } from './usm.js';

export const { describe, run } = step({
  name: '{{ name }}',
  version: '0.1.0',
  hooks: ['create'],
  run(input) {
    const category = input.fieldStr('category');
    if (category === undefined) {
      return reject('missing_category', 'choose a category for the incident');
    }
    const teams = input.config.teams;
    // A thrown Error fails the write with its message.
    if (typeof teams !== 'object' || teams === null) {
      throw new Error('config: teams must map categories to groups');
    }
    const team = Object.hasOwn(teams, category) ? teams[category] : 'service-desk';
    return setFields({ assignment_group: team });
  },
});
