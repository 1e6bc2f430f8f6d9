// @ts-check
// The TypeScript client against a real `reverie serve` of a CartPole bundle (tests/test_ts_client.py starts
// it): a read token and an experience token set, an experience log. What the Python REST client is held
// to: act (single, batched, seeded, deterministic), value, imagine (GET, POST, a plan, the preview), every
// refusal as a typed ApiError naming its field, sessions with memory, teaching reports, evaluation
// sessions, uploads (a retry stored once, a bad fragment storing nothing), getModel, health, tokens.
// What it sent for the experience log goes to $REVERIE_TS_OUT, where the Python side reads the log back.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { ApiError, NetworkError, ReverieClient } from "../dist/index.js";

const URL = process.env.REVERIE_URL ?? "";
const TOKEN = process.env.REVERIE_TOKEN ?? "";
const WRITER = process.env.REVERIE_EXPERIENCE_TOKEN ?? "";
const OUT = process.env.REVERIE_TS_OUT ?? "";
const OBS = [0.01, 0.02, 0.03, 0.04];

/** Observations of a made-up episode (a small LCG: the same every run). */
function observations(n, seed) {
  let x = seed;
  const next = () => ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 0.2 - 0.1;
  return Array.from({ length: n }, () => [next(), next(), next(), next()]);
}

/** A client whose requests' JSON bodies are kept (they still go to the server as they are). */
function watched(options) {
  /** @type {Record<string, unknown>[]} */
  const bodies = [];
  const client = new ReverieClient(URL, {
    ...options,
    fetch: async (request) => {
      const text = await request.clone().text();
      bodies.push(text ? JSON.parse(text) : {});
      return fetch(request);
    },
  });
  return { client, bodies };
}

/** The ApiError a call is refused with. */
async function refusal(call) {
  const err = await call().then(() => assert.fail("expected a refusal"), (e) => e);
  assert.ok(err instanceof ApiError, `expected an ApiError, got ${err}`);
  return err;
}

const argmax = (/** @type {number[]} */ p) => p.indexOf(Math.max(...p));
const client = new ReverieClient(URL, { token: TOKEN, experienceToken: WRITER });

test("the environment names a server", () => {
  assert.match(URL, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.ok(TOKEN && WRITER && OUT);
});

describe("status", () => {
  test("health needs no token and says one is required; ready; getModel names the served bundle", async () => {
    const anonymous = new ReverieClient(URL);
    assert.deepEqual(await anonymous.health(), { status: "ok", token_required: true });
    assert.equal(await anonymous.ready(), true);
    const info = await client.getModel();
    assert.equal(info.model_version, 1);
    assert.equal(info.manifest.env_id, "CartPole-v1");
    assert.deepEqual(info.manifest.observation_space.shape, [4]);
    assert.deepEqual([info.manifest.action_space.kind, info.manifest.action_space.n], ["discrete", 2]);
  });

  test("without a token every data call is a 401 naming Authorization; the experience token may act", async () => {
    const anonymous = new ReverieClient(URL);
    for (const call of [() => anonymous.act(OBS), () => anonymous.getModel(), () => anonymous.imagine(OBS, { method: "GET" })]) {
      const err = await refusal(call);
      assert.deepEqual([err.status, err.field], [401, "Authorization"]);
    }
    const writer = new ReverieClient(URL, { experienceToken: WRITER });
    assert.equal((await writer.act(OBS)).model_version, 1);
  });
});

describe("act", () => {
  test("one observation: an action of the space, its probabilities, the value and the version", async () => {
    const step = await client.act(OBS);
    assert.ok(step.action === 0 || step.action === 1);
    assert.equal(step.probs?.length, 2);
    assert.ok(Math.abs((step.probs ?? [0, 0]).reduce((a, b) => a + b) - 1) < 1e-5);
    assert.ok(Number.isFinite(step.value));
    assert.equal(step.model_version, 1);
    assert.equal(step.session_step ?? null, null);
  });

  test("deterministic is the most likely action; a seed reproduces a sample; typed arrays are observations", async () => {
    const sure = await client.act(OBS, { deterministic: true });
    assert.equal(sure.action, argmax(sure.probs ?? []));
    const a = await Promise.all([1, 2, 3, 4, 5, 6].map((seed) => client.act(OBS, { seed })));
    const b = await Promise.all([1, 2, 3, 4, 5, 6].map((seed) => client.act(OBS, { seed })));
    assert.deepEqual(a.map((s) => s.action), b.map((s) => s.action));
    const typed = await client.act(new Float64Array(OBS), { deterministic: true });
    assert.deepEqual([typed.action, typed.value], [sure.action, sure.value]);
  });

  test("a batch answers each observation as a single request would", async () => {
    const batch = observations(3, 7);
    const answer = await client.actBatch(batch, { deterministic: true });
    assert.equal(answer.actions.length, 3);
    assert.equal(answer.probs?.length, 3);
    for (const [i, obs] of batch.entries()) {
      const single = await client.act(obs, { deterministic: true });
      assert.equal(answer.actions[i], single.action);
      assert.ok(Math.abs(answer.values[i] - single.value) < 1e-4);
    }
  });

  test("a wrong observation is a 422 ApiError naming the field", async () => {
    /** @type {[unknown, string][]} */
    const cases = [[[0, 0, 0], "obs"], [[0, true, 0, 0], "obs[1]"], [[0, 0, "1", 0], "obs[2]"], [[[0, 0, 0, 0]], "obs"]];
    for (const [obs, field] of cases) {
      const err = await refusal(() => client.act(/** @type {any} */ (obs)));
      assert.deepEqual([err.status, err.field], [422, field], err.message);
      assert.ok(err.detail.length > 0 && err.message.includes(field));
    }
    const err = await refusal(() => client.actBatch([OBS, [0, 0]]));
    assert.deepEqual([err.status, err.field], [422, "observations[1]"]);
  });
});

describe("value", () => {
  test("the critic's value is the one act answers with, single and batched", async () => {
    const step = await client.act(OBS, { deterministic: true });
    const value = await client.value(OBS);
    assert.equal(value.model_version, 1);
    assert.ok(Math.abs(value.value - step.value) < 1e-5);
    const batch = await client.values([OBS, ...observations(2, 3)]);
    assert.equal(batch.values.length, 3);
    assert.ok(Math.abs(batch.values[0] - value.value) < 1e-4);
    const err = await refusal(() => client.value([1, 2]));
    assert.deepEqual([err.status, err.field], [422, "obs"]);
  });
});

describe("imagine", () => {
  test("POST: samples x horizon steps of states, actions, rewards, continues, values, lambda-returns", async () => {
    const plan = await client.imagine(OBS, { horizon: 5, samples: 3, seed: 0 });
    assert.deepEqual([plan.model_version, plan.horizon, plan.trajectories.length], [1, 5, 3]);
    for (const t of plan.trajectories) {
      for (const key of ["actions", "rewards", "continues", "lambda_return", "disagreement"]) {
        assert.equal(t[key].length, 5, key);
      }
      assert.ok(t.actions.every((a) => a === 0 || a === 1));
      assert.ok(t.states.length >= 5 && t.states.every((s) => s.every(Number.isFinite)));
    }
  });

  test("GET answers as POST does, and is the form a session's imagination takes", async () => {
    const options = { horizon: 4, samples: 2, deterministic: true };
    const byGet = await client.imagine(OBS, { ...options, method: "GET" });
    const byPost = await client.imagine(OBS, options);
    assert.deepEqual(byGet.trajectories.map((t) => t.actions), byPost.trajectories.map((t) => t.actions));
    byGet.trajectories.forEach((t, i) => t.lambda_return.forEach((r, j) =>
      assert.ok(Math.abs(r - byPost.trajectories[i].lambda_return[j]) < 1e-5)));
    await assert.rejects(client.imagine({ image: "AAAA" }, { method: "GET" }), TypeError);  // a frame goes by POST
  });

  test("a plan is evaluated as given; its length is the horizon; a bad plan is a 422 naming it", async () => {
    const actions = [0, 1, 1, 0, 1];
    const plan = await client.imagine(OBS, { actions, samples: 2 });
    assert.equal(plan.horizon, 5);
    for (const t of plan.trajectories) assert.deepEqual(t.actions, actions);
    const other = await client.imagine(OBS, { actions: [1, 1, 1, 1, 1], samples: 2 });
    assert.notDeepEqual(other.trajectories[0].states, plan.trajectories[0].states);  // the plan moves the imagined states
    let err = await refusal(() => client.imagine(OBS, { actions, horizon: 4 }));
    assert.deepEqual([err.status, err.field], [422, "horizon"]);
    err = await refusal(() => client.imagine(OBS, { actions: [0, 2] }));
    assert.deepEqual([err.status, err.field], [422, "actions[1]"]);
    err = await refusal(() => client.imagine(OBS, { horizon: 100000 }));
    assert.deepEqual([err.status, err.field], [422, "horizon"]);
  });

  test("the preview is a PNG", async () => {
    const picture = await client.preview(OBS, { horizon: 3, samples: 2, seed: 0 });
    const head = new Uint8Array(await picture.arrayBuffer()).slice(0, 4);
    assert.deepEqual([...head], [0x89, 0x50, 0x4e, 0x47]);
  });
});

describe("sessions", () => {
  test("the server keeps a session's steps: session_step counts them, reset starts again", async () => {
    const session = client.session(`ts-memory-${process.pid}`);
    const steps = [];
    for (const obs of observations(3, 11)) steps.push((await session.act(obs)).session_step);
    assert.deepEqual(steps, [0, 1, 2]);
    session.reset();
    assert.equal((await session.act(OBS)).session_step, 0);
    assert.equal((await session.value(OBS)).model_version, 1);
    assert.equal((await session.imagine(OBS, { horizon: 3 })).horizon, 3);
    const err = await refusal(() => client.act(OBS, { session: "no spaces allowed" }));
    assert.deepEqual([err.status, err.field], [422, "session"]);
    const reset = await refusal(() => client.act(OBS, { reset: true }));
    assert.equal(reset.status, 422);
    // A history goes as `history` (this model reads none: history_length 0, so one step is too long).
    const remembered = await refusal(() => client.act(OBS, { history: { observations: [new Float32Array(OBS)], actions: [1] } }));
    assert.equal(remembered.status, 422);
    assert.match(remembered.field ?? "", /^history/);
  });

  test("teaching: each reported outcome completes a transition; after an end a new episode starts", async () => {
    const id = `ts-teach-${process.pid}`;
    const session = client.session(id);
    /** @type {{obs: number[], action: unknown, reward: number, next_obs: number[], terminated: boolean, truncated: boolean}[][]} */
    const episodes = [];
    /** @type {[number, string][]} */
    const plays = [[5, "terminated"], [3, "truncated"]];
    for (const [e, [length, end]] of plays.entries()) {
      const seen = observations(length + 1, 100 + e);
      const played = [];
      let step = await session.act(seen[0]);
      assert.equal(step.session_step, 0);
      for (let i = 1; i <= length; i++) {
        const outcome = { reward: 0.5 * i, terminated: i === length && end === "terminated", truncated: i === length && end === "truncated" };
        played.push({ obs: seen[i - 1], action: step.action, reward: outcome.reward, next_obs: seen[i],
                      terminated: outcome.terminated, truncated: outcome.truncated });
        step = await session.act(seen[i], outcome);
        assert.equal(step.session_step, i);
      }
      episodes.push(played);
    }
    assert.equal((await session.act(OBS)).session_step, 0);  // the helper started a new episode after the end
    writeFileSync(join(OUT, "teach.json"), JSON.stringify({ source: `session:${id}`, episodes }));
  });

  test("reports the server cannot place are refused with their field; the read token may not report", async () => {
    let err = await refusal(() => client.act(OBS, { session: `ts-fresh-${process.pid}`, reward: 1 }));
    assert.deepEqual([err.status, err.field], [409, "session"]);
    err = await refusal(() => client.act(OBS, { reward: 1 }));
    assert.deepEqual([err.status, err.field], [422, "reward"]);
    err = await refusal(() => client.act(OBS, { session: `ts-fresh-${process.pid}`, terminated: true }));
    assert.deepEqual([err.status, err.field], [422, "terminated"]);
    const reader = new ReverieClient(URL, { token: TOKEN });
    await reader.act(OBS, { session: `ts-reader-${process.pid}`, reset: true });
    err = await refusal(() => reader.act(OBS, { session: `ts-reader-${process.pid}`, reward: 1 }));
    assert.deepEqual([err.status, err.field], [403, "Authorization"]);
  });

  test("an evaluation session sends evaluate with reset at its start only, and plays deterministically", async () => {
    const { client: observed, bodies } = watched({ token: TOKEN, experienceToken: WRITER });
    await observed.act(OBS, { session: `ts-plain-${process.pid}`, reset: true });
    assert.ok(!("evaluate" in bodies[0]), "evaluate is sent only when set");
    const document = await (await fetch(`${URL}/openapi.json`)).json();
    const known = "evaluate" in document.components.schemas.ActRequest.properties;
    const evaluation = observed.session(`ts-eval-${process.pid}`, { evaluate: true });
    if (!known) {  // a server from before evaluation sessions refuses the field it does not know
      const err = await refusal(() => evaluation.act(OBS));
      assert.deepEqual([err.status, err.field], [422, "evaluate"]);
      return;
    }
    const first = await evaluation.act(OBS);
    assert.equal(first.session_step, 0);
    assert.deepEqual([bodies[1].evaluate, bodies[1].reset], [true, true]);
    for (const [i, obs] of observations(6, 5).entries()) {
      const step = await evaluation.act(obs, { reward: 1 });
      assert.equal(step.action, argmax(step.probs ?? []), "an evaluation acts deterministically");
      assert.ok(!("evaluate" in bodies[i + 2]) && !("reset" in bodies[i + 2]));
    }
    const err = await refusal(() => client.act(OBS, { session: `ts-eval2-${process.pid}`, evaluate: true }));
    assert.deepEqual([err.status, err.field], [422, "evaluate"]);  // evaluate goes with reset
  });
});

describe("uploads", () => {
  const episode = `ts-upload-${process.pid}`;
  const seen = observations(7, 42);
  /** @type {import("../dist/index.js").Fragment[]} */
  const fragments = [
    { episode, index: 0, observations: seen.slice(0, 4), actions: [0, 1, 1], rewards: [1, 1, 1], modelVersions: [1, 1, 1] },
    { episode, index: 1, observations: seen.slice(3, 7), actions: [0, 0, 1], rewards: [1, 0.5, -1], terminated: true },
  ];

  test("fragments are stored in order; the same upload again is stored once", async () => {
    const answers = await client.upload(fragments);
    assert.deepEqual(answers.map((a) => [a.episode, a.index, a.stored]), [[episode, 0, true], [episode, 1, true]]);
    assert.equal(answers[1].seq, answers[0].seq + 1);
    const again = await client.upload(fragments);
    assert.deepEqual(again, answers.map((a) => ({ ...a, stored: false })));
    writeFileSync(join(OUT, "uploads.json"), JSON.stringify({ fragments, seqs: answers.map((a) => a.seq) }));
  });

  test("a bad fragment is a 422 naming it and nothing of its upload is stored", async () => {
    const good = { ...fragments[0], episode: `${episode}-beside` };
    /** @type {[object, string][]} */
    const cases = [[{ actions: [0, 2, 1] }, "fragments[1].steps[1].action"],
                   [{ rewards: [1, 1e9, 1] }, "fragments[1].steps[1].reward"],
                   [{ episode: "no spaces" }, "fragments[1].episode"]];
    for (const [change, field] of cases) {
      const err = await refusal(() => client.upload([good, { ...fragments[0], episode: `${episode}-bad`, ...change }]));
      assert.deepEqual([err.status, err.field], [422, field]);
    }
    assert.equal((await client.upload([good]))[0].stored, true);  // so none of those uploads stored it
    await assert.rejects(client.upload([{ ...good, rewards: [1] }]), TypeError);  // checked before sending
  });

  test("uploads take the experience token: the read token is a 403, none a 401", async () => {
    const fragment = { ...fragments[0], episode: `${episode}-denied` };
    let err = await refusal(() => new ReverieClient(URL, { token: TOKEN }).upload([fragment]));
    assert.deepEqual([err.status, err.field], [403, "Authorization"]);
    err = await refusal(() => new ReverieClient(URL).upload([fragment]));
    assert.equal(err.status, 401);
    assert.ok(!(err instanceof NetworkError));
  });
});
