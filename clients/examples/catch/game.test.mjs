// @ts-check
// The game's rules under Node (`node --test clients/examples/catch/game.test.mjs`; tests/test_browser_game.py
// runs it): what spaces.json declares, scoring, the ends of an episode, seeding, and that the game can be
// won (a player that reads where the ball lands scores the most there is) and is not won by chance.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { ACTIONS, CATCH_REACH, Catch, FALL_STEPS, MAX_STEPS, OBSERVATION_SIZE, oracle, random } from "./game.mjs";

const spaces = JSON.parse(readFileSync(new URL("./spaces.json", import.meta.url), "utf8"));

/** Plays one episode with `policy`; [return, steps, the last step]. */
function play(game, policy) {
  game.reset();
  let total = 0, steps = 0, step;
  do {
    step = game.step(policy(game));
    total += step.reward;
    steps += 1;
  } while (!step.terminated && !step.truncated);
  return [total, steps, step];
}

test("spaces.json declares the game's observation and actions", () => {
  assert.deepEqual(spaces.observation_space, { shape: [OBSERVATION_SIZE], dtype: "float32" });
  assert.deepEqual(spaces.action_space, { kind: "discrete", n: ACTIONS });
  assert.equal(spaces.name, "catch");
});

test("observations are float32 vectors of the declared size within [-1, 1], whatever is played", () => {
  const game = new Catch(3), rng = random(4);
  for (let episode = 0; episode < 50; episode++) {
    const first = game.reset();
    assert.ok(first instanceof Float32Array && first.length === OBSERVATION_SIZE);
    let step;
    do {
      step = game.step(Math.floor(rng() * ACTIONS));
      assert.equal(step.obs.length, OBSERVATION_SIZE);
      for (const v of step.obs) assert.ok(v >= -1 && v <= 1, `observation entry ${v} outside [-1, 1]`);
    } while (!step.terminated && !step.truncated);
  }
});

test("a ball under the paddle is caught (+1, the score, the next ball at the top); a miss ends the episode with 0", () => {
  const game = new Catch(0);
  game.reset();
  game.paddle = 0;
  game.ball = { x: 0.1, y: 1, vx: 0, fallen: 0 };
  for (let i = 1; i < FALL_STEPS; i++) {
    const step = game.step(1);
    assert.deepEqual([step.reward, step.terminated, step.truncated], [0, false, false]);
    assert.ok(Math.abs(step.obs[2] - (1 - (2 * i) / FALL_STEPS)) < 1e-6, "the ball falls 2/FALL_STEPS a step");
  }
  const caught = game.step(1);
  assert.deepEqual([caught.reward, caught.caught, caught.terminated, game.score], [1, true, false, 1]);
  assert.equal(caught.obs[2], 1); // the next ball
  game.ball = { x: CATCH_REACH + 0.05, y: 1, vx: 0, fallen: 0 };
  let step;
  for (let i = 0; i < FALL_STEPS; i++) step = game.step(1);
  assert.deepEqual([step.reward, step.missed, step.terminated, step.truncated, game.score], [0, true, true, false, 1]);
  assert.throws(() => game.step(1), /reset\(\) first/);
});

test("actions move the paddle left, not at all, right, within the walls; others are refused", () => {
  const game = new Catch(0);
  game.reset();
  game.paddle = 0;
  assert.ok(Math.abs(game.step(0).obs[0] + 0.1) < 1e-6);
  assert.ok(Math.abs(game.step(1).obs[0] + 0.1) < 1e-6);
  assert.ok(Math.abs(game.step(2).obs[0]) < 1e-6);
  for (const bad of [-1, 3, 1.5, NaN]) assert.throws(() => game.step(bad), RangeError);
});

test("a player that reads where the ball lands catches every ball until the step limit cuts the episode", () => {
  const game = new Catch(11);
  for (let episode = 0; episode < 20; episode++) {
    const [total, steps, last] = play(game, oracle);
    assert.deepEqual([total, steps, last.truncated, last.terminated], [MAX_STEPS / FALL_STEPS, MAX_STEPS, true, false]);
  }
});

test("chance does not win it: random and constant play score well under one ball in two", () => {
  const rng = random(5);
  for (const policy of [() => Math.floor(rng() * ACTIONS), () => 0, () => 1, () => 2]) {
    const game = new Catch(6);
    let total = 0;
    for (let episode = 0; episode < 500; episode++) total += play(game, policy)[0];
    assert.ok(total / 500 < 0.5, `mean return ${total / 500}`);
  }
});

test("a seed replays the same balls; another seed plays others", () => {
  const balls = (seed) => {
    const game = new Catch(seed);
    return Array.from({ length: 5 }, () => Array.from(game.reset()));
  };
  assert.deepEqual(balls(1), balls(1));
  assert.notDeepEqual(balls(1), balls(2));
});
