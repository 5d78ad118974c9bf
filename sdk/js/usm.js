// usm SDK for pipeline steps written in JavaScript and built with componentize-js.
//
// `step({...})` returns the two functions the `usm:plugin/step` world exports. It turns the
// WIT input into plain objects (the record, config, actor and context arrive as JSON text) and
// turns anything the step throws (an `Error`, a string, anything else) into the step error the
// host reports, so a failing step fails its write with the message instead of crashing the
// bindings.

/** The record's field `name`, or `undefined`. */
function field(record, name) {
  const fields = record && typeof record.fields === 'object' ? record.fields : {};
  return fields[name];
}

function parse(text) {
  return text === undefined || text === null ? null : JSON.parse(text);
}

function message(thrown) {
  if (thrown instanceof Error) return thrown.message || thrown.name;
  return typeof thrown === 'string' ? thrown : JSON.stringify(thrown) ?? String(thrown);
}

/** Go on unchanged. */
export function proceed() {
  return { tag: 'proceed' };
}

/** Go on with this JSON merge patch of `title`, `fields` and `links`. */
export function patch(mergePatch) {
  return { tag: 'patch', val: JSON.stringify(mergePatch) };
}

/** Go on with these fields set (a patch of `fields` only). */
export function setFields(fields) {
  return patch({ fields });
}

/** Refuse the write: the client gets 422 naming the module, the step and `code`. */
export function reject(code, message) {
  return { tag: 'reject', val: { code, message } };
}

/** Follow-up writes of an after-step, e.g. `{type: 'create_record', ...}`. */
export function effects(list) {
  return { tag: 'effects', val: list.map((effect) => JSON.stringify(effect)) };
}

/**
 * Defines a step. `run(input)` gets `{hook, phase, record, previous, actor, context, config,
 * field(name), fieldStr(name)}` and returns one of `proceed()`, `patch()`, `setFields()`,
 * `reject()` or `effects()`; throwing fails the write with the thrown message.
 */
export function step({ name, version, hooks, configSchema, run }) {
  const schema = configSchema === undefined ? undefined : JSON.stringify(configSchema);
  return {
    describe() {
      return { name, version, hooks, configSchema: schema };
    },
    run(raw) {
      try {
        const record = parse(raw.record);
        const input = {
          hook: raw.hook,
          phase: raw.phase,
          record,
          previous: parse(raw.previous),
          actor: parse(raw.actor),
          context: parse(raw.context),
          config: parse(raw.config),
          field: (fieldName) => field(record, fieldName),
          fieldStr: (fieldName) => {
            const value = field(record, fieldName);
            return typeof value === 'string' ? value : undefined;
          },
        };
        return run(input);
      } catch (thrown) {
        // componentize-js maps a thrown value to the `err` of `result<output, string>` only
        // when it is a string.
        throw message(thrown);
      }
    },
  };
}
