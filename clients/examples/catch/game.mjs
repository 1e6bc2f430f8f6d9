// @ts-check
/**
 * Catch: a paddle at the bottom of the field catches balls that fall from the top. The game's logic
 * only (no DOM), so that the page (page.mjs), a Node script (learn.mjs) and the unit tests
 * (game.test.mjs) share it.
 *
 * The field is [-1, 1] x [-1, 1]. One ball falls at a time, `FALL_STEPS` steps from top to bottom,
 * drifting sideways and bouncing off the walls; the paddle moves left, stays or moves right (actions
 * 0, 1, 2) by `PADDLE_SPEED` a step. A ball that reaches the bottom within `CATCH_REACH` of the paddle's
 * centre is caught (reward 1, the score goes up, the next ball falls from the top); the first one missed
 * ends the episode (terminated, reward 0), and `MAX_STEPS` steps cut it (truncated). So an episode's
 * return is its score, from 0 to MAX_STEPS / FALL_STEPS.
 *
 * The observation (spaces.json: float32 [5], each within [-1, 1]): the paddle's x, the ball's x and y,
 * the ball's sideways speed over its largest, and half the ball's x less the paddle's.
 */

export const ACTIONS = 3; // 0 left, 1 stay, 2 right
export const OBSERVATION_SIZE = 5;
export const FALL_STEPS = 20;
export const MAX_STEPS = 200;
export const PADDLE_SPEED = 0.1;
export const PADDLE_HALF_WIDTH = 0.2;
export const BALL_RADIUS = 0.05;
export const CATCH_REACH = PADDLE_HALF_WIDTH + BALL_RADIUS;
export const MAX_DRIFT = 0.04;
const FALL_SPEED = 2 / FALL_STEPS;

/** A small seeded generator (mulberry32): the same seed plays the same balls. */
export function random(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One step of a ball's sideways drift: [x, vx] after it, bounced off a wall. */
function drift(/** @type {number} */ x, /** @type {number} */ vx) {
  x += vx;
  const wall = 1 - BALL_RADIUS;
  return Math.abs(x) > wall ? [Math.sign(x) * wall * 2 - x, -vx] : [x, vx];
}

const clip = (/** @type {number} */ x, /** @type {number} */ lo, /** @type {number} */ hi) => Math.min(hi, Math.max(lo, x));

/**
 * @typedef {{ obs: Float32Array, reward: number, terminated: boolean, truncated: boolean,
 *              caught: boolean, missed: boolean }} Step
 */

export class Catch {
  /** @param {number} seed */
  constructor(seed = 0) {
    this.rng = random(seed);
    this.paddle = 0;
    this.ball = { x: 0, y: 1, vx: 0, fallen: 0 };
    this.score = 0;
    this.t = 0;
    this.over = true;
  }

  /** A new episode: the paddle somewhere along the bottom, a ball at the top. */
  reset() {
    this.paddle = clip(this.rng() * 2 - 1, -1 + PADDLE_HALF_WIDTH, 1 - PADDLE_HALF_WIDTH);
    this.score = 0;
    this.t = 0;
    this.over = false;
    this.drop();
    return this.observation();
  }

  /** The next ball: anywhere along the top, drifting left or right. */
  drop() {
    this.ball = { x: (this.rng() * 2 - 1) * (1 - BALL_RADIUS), y: 1, vx: (this.rng() * 2 - 1) * MAX_DRIFT, fallen: 0 };
  }

  observation() {
    const { paddle, ball } = this;
    return Float32Array.of(paddle, ball.x, ball.y, ball.vx / MAX_DRIFT, (ball.x - paddle) / 2);
  }

  /**
   * @param {number} action 0 left, 1 stay, 2 right
   * @returns {Step}
   */
  step(action) {
    if (this.over) throw new Error("the episode is over: reset() first");
    if (!Number.isInteger(action) || action < 0 || action >= ACTIONS) throw new RangeError(`action must be 0, 1 or 2, got ${action}`);
    this.paddle = clip(this.paddle + (action - 1) * PADDLE_SPEED, -1 + PADDLE_HALF_WIDTH, 1 - PADDLE_HALF_WIDTH);
    const ball = this.ball;
    [ball.x, ball.vx] = drift(ball.x, ball.vx);
    ball.fallen += 1;
    ball.y = 1 - ball.fallen * FALL_SPEED;
    this.t += 1;
    let reward = 0, caught = false, missed = false;
    if (ball.fallen === FALL_STEPS) {
      if (Math.abs(ball.x - this.paddle) <= CATCH_REACH) {
        caught = true;
        reward = 1;
        this.score += 1;
        this.drop();
      } else {
        missed = true;
      }
    }
    const terminated = missed;
    const truncated = !terminated && this.t >= MAX_STEPS;
    this.over = terminated || truncated;
    return { obs: this.observation(), reward, terminated, truncated, caught, missed };
  }
}

/** The move that brings the paddle under where the ball will land (an upper bound for a learner). */
export function oracle(/** @type {Catch} */ game) {
  let { x, vx, fallen } = game.ball;
  for (; fallen < FALL_STEPS; fallen++) [x, vx] = drift(x, vx);
  const gap = x - game.paddle;
  return Math.abs(gap) < PADDLE_SPEED / 2 ? 1 : gap > 0 ? 2 : 0;
}
