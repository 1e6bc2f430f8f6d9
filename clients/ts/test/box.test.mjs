// @ts-check
// The TypeScript client against a real `reverie serve` of a Pendulum bundle (a Box action space, no token):
// actions are vectors in the env's bounds, with the distribution's mean and std; a plan of vectors is
// evaluated as given; an action outside the bounds is a 422 naming its element.
import assert from "node:assert/strict";
import { test } from "node:test";
import { ApiError, ReverieClient } from "../dist/index.js";

const client = new ReverieClient(process.env.REVERIE_BOX_URL ?? "");
const OBS = [0.5, -0.5, 0.1];

test("a Box action is a vector within the bounds, with the Normal's mean and std", async () => {
  assert.deepEqual(await client.health(), { status: "ok", token_required: false });
  const info = await client.getModel();
  assert.deepEqual([info.manifest.action_space.kind, info.manifest.action_space.high], ["box", [2]]);
  const step = await client.act(OBS, { seed: 3 });
  assert.ok(Array.isArray(step.action) && step.action.length === 1);
  assert.ok(Math.abs(step.action[0]) <= 2);
  assert.equal(step.mean?.length, 1);
  assert.ok((step.std?.[0] ?? 0) > 0);
  assert.equal(step.probs ?? null, null);
  const batch = await client.actBatch([OBS, [1, 0, 0]], { deterministic: true });
  assert.ok(batch.actions.every((a) => Array.isArray(a) && a.length === 1));
});

test("a plan of Box actions is evaluated as given; one out of bounds is a 422 naming its element", async () => {
  const actions = [[0.5], [-1.5], [2]];
  const plan = await client.imagine(OBS, { actions });
  assert.equal(plan.horizon, 3);
  plan.trajectories[0].actions.forEach((a, i) => assert.ok(Math.abs(/** @type {number[]} */ (a)[0] - actions[i][0]) < 1e-5));
  const err = await client.imagine(OBS, { actions: [[0.5], [3]] }).then(() => assert.fail("accepted"), (e) => e);
  assert.ok(err instanceof ApiError);
  assert.deepEqual([err.status, err.field], [422, "actions[1][0]"]);
});
