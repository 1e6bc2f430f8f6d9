// @ts-check
/**
 * Playing Catch against a Reverie server, shared by the page (page.mjs) and the Node script (learn.mjs).
 * One episode is played in a session of the TypeScript client: its first `act` starts the episode, and
 * each later one reports what followed the previous action (reward, terminated, truncated) with the
 * observation that followed, so that the server writes the transition to its experience log for the
 * trainer. A session made with `{ evaluate: true }` plays an evaluation episode instead: the server's
 * newest version acts deterministically throughout, and the trainer takes the return as that version's
 * evaluation (after `client_eval_episodes` of them).
 */

/** @typedef {import("./game.mjs").Catch} Catch */
/** @typedef {import("./game.mjs").Step} Step */
/** @typedef {{ act: (obs: ArrayLike<number>, outcome?: { reward: number, terminated?: boolean, truncated?: boolean })
 *               => Promise<{ action: unknown, model_version: number }>, reset: () => void }} Session */

/**
 * @typedef {object} Episode
 * @property {number} return   the episode's return: the score
 * @property {number} steps    the steps played
 * @property {number[]} versions  the model versions that chose its actions (one for an evaluation)
 * @property {boolean} truncated  cut by the step limit rather than ended by a miss
 */

/**
 * Plays one episode of `game` in `session`.
 * @param {Session} session
 * @param {Catch} game
 * @param {{ onStep?: (game: Catch, step: Step | null, version: number) => void, pace?: () => Promise<void>,
 *           stopped?: () => boolean }} [hooks] `onStep` after each answer (`step` null at the start), `pace`
 *   awaited between steps (the game's tick), `stopped` ends the episode early (it is then not reported)
 * @returns {Promise<Episode | null>} null when stopped
 */
export async function playEpisode(session, game, hooks = {}) {
  const { onStep, pace, stopped } = hooks;
  session.reset(); // whatever happened before (an error mid-episode, say), this act starts an episode
  let answer = await session.act(game.reset());
  const versions = new Set();
  let total = 0, steps = 0;
  onStep?.(game, null, answer.model_version);
  for (;;) {
    versions.add(answer.model_version);
    const step = game.step(/** @type {number} */ (answer.action));
    total += step.reward;
    steps += 1;
    // The outcome of the action, with what followed it: the server logs the transition.
    answer = await session.act(step.obs, { reward: step.reward, terminated: step.terminated, truncated: step.truncated });
    onStep?.(game, step, answer.model_version);
    if (step.terminated || step.truncated) {
      return { return: total, steps, versions: [...versions], truncated: step.truncated };
    }
    if (stopped?.()) return null;
    await pace?.();
  }
}

/**
 * A pace of `rate` steps per second (0: as fast as the server answers): `await tick()` between steps
 * waits what is left of the step's time.
 * @param {number} rate
 */
export function ticker(rate) {
  const period = rate > 0 ? 1000 / rate : 0;
  let due = performance.now();
  return async () => {
    if (period === 0) return;
    due = Math.max(due + period, performance.now()); // late: no burst of steps to catch up
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  };
}

/** A session id for this player: 1-128 characters of A-Za-z0-9._- */
export function sessionId(prefix = "catch") {
  const bytes = new Uint8Array(6);
  globalThis.crypto.getRandomValues(bytes);
  return `${prefix}-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}
