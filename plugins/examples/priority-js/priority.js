// Example usm step in JavaScript: sets an incident's `priority` (P1–P5) from its `impact` and
// `urgency` through the matrix in the module config, and flags P1 as a major incident. The same
// step as `../priority` (Rust) and `../priority-py` (Python): all three give the same patches.

import { step, proceed, reject, setFields } from './usm.js';
import { log } from 'usm:plugin/host@0.1.0';

export const { describe, run } = step({
  name: 'priority',
  version: '0.1.0',
  hooks: ['create', 'update'],
  configSchema: {
    type: 'object',
    required: ['matrix'],
    properties: {
      matrix: {
        type: 'object',
        additionalProperties: {
          type: 'object',
          additionalProperties: { type: 'string', pattern: '^P[1-5]$' },
        },
      },
    },
  },
  run(input) {
    const impact = input.fieldStr('impact');
    const urgency = input.fieldStr('urgency');
    if (impact === undefined || urgency === undefined) return proceed();
    const row = Object.hasOwn(input.config.matrix, impact) ? input.config.matrix[impact] : undefined;
    const priority = row !== undefined && Object.hasOwn(row, urgency) ? row[urgency] : undefined;
    if (priority === undefined) {
      return reject(
        'unknown_priority',
        `no priority is defined for impact ${impact} and urgency ${urgency}`,
      );
    }
    if (input.fieldStr('priority') === priority) return proceed();
    if (priority === 'P1') log('info', `major incident: ${input.record.title}`);
    return setFields({ priority, major_incident: priority === 'P1' });
  },
});
