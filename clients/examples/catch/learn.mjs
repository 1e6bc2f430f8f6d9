// @ts-check
/**
 * Catch from random to learned, measured: plays the game against a running
 * `reverie up --spaces clients/examples/catch/spaces.json` for a bounded time, teaching in a session as the
 * page does (the same game and coach modules, the same TypeScript client), and evaluates each new version
 * the server exports with `--eval-episodes` evaluation-session episodes (the newest version, deterministic:
 * the trainer's eval_return for it). Prints a line per evaluation (minutes, client steps taught, the
 * version serving the teaching session, the version evaluated, its returns) and a Markdown table at the end.
 *
 *     node clients/examples/catch/learn.mjs --server http://127.0.0.1:8000 --minutes 15 --rate 10
 *
 * Options: --server URL, --minutes M (15), --rate R (taught steps per second, a game's tick rate; 0: as
 * fast as the server answers; default 10), --eval-episodes N (3: the trainer's client_eval_episodes),
 * --seed S (1), --json FILE (the rows, for a record), --token T (the server's REVERIE_API_TOKEN, if set).
 */
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { ReverieClient } from "../../ts/dist/index.js";
import { playEpisode, sessionId, ticker } from "./coach.mjs";
import { ACTIONS, Catch, OBSERVATION_SIZE } from "./game.mjs";

const { values: args } = parseArgs({
  options: {
    server: { type: "string", default: "http://127.0.0.1:8000" },
    minutes: { type: "string", default: "15" },
    rate: { type: "string", default: "10" },
    "eval-episodes": { type: "string", default: "3" },
    seed: { type: "string", default: "1" },
    json: { type: "string" },
    token: { type: "string" },
  },
});
const server = /** @type {string} */ (args.server).replace(/\/+$/, "");
const minutes = Number(args.minutes), rate = Number(args.rate), evalEpisodes = Number(args["eval-episodes"]);
const seed = Number(args.seed);
const token = args.token;

const client = new ReverieClient(server, { token, retries: 5 });
await client.waitReady(300_000, 500);
const model = await client.getModel();
const { observation_space: space, action_space: actions } = model.manifest;
if (space.shape.join() !== String(OBSERVATION_SIZE) || actions.kind !== "discrete" || actions.n !== ACTIONS) {
  throw new Error(`${server} serves ${model.manifest.env_id}, not Catch: start it with --spaces clients/examples/catch/spaces.json`);
}

/** The newest exported version (GET /live's serving.newest_version), which an evaluation session plays. */
async function newest() {
  const response = await fetch(`${server}/live`, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (!response.ok) throw new Error(`GET /live: ${response.status}`);
  return /** @type {{ serving: { newest_version: number | null } }} */ (await response.json()).serving.newest_version ?? 0;
}

const teacher = client.session(sessionId("catch-learn"));
const evaluator = client.session(sessionId("catch-learn-eval"), { evaluate: true });
const game = new Catch(seed), evalGame = new Catch(seed + 1_000_003);
const pace = ticker(rate);
const started = performance.now();
const elapsed = () => (performance.now() - started) / 60_000;
let taughtSteps = 0, evalSteps = 0, served = model.model_version, evaluatedUpTo = 0, lastCheck = -Infinity;
/** @type {number[]} taught returns since the last evaluation */
let recent = [];
/** @type {{ minutes: number, taught_steps: number, eval_steps: number, served: number, version: number,
 *           returns: number[], mean: number, taught_mean: number | null, taught_episodes: number }[]} */
const rows = [];
const mean = (/** @type {number[]} */ xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

console.log(`# Catch against ${server} (${model.manifest.env_id}), ${minutes} min at ${rate > 0 ? `${rate} steps/s` : "the server's pace"}`);
console.log("minutes\ttaught_steps\tserved\tevaluated\treturns\tmean\ttaught_mean");

async function evaluate() {
  /** @type {Map<number, number[]>} */
  const byVersion = new Map();
  for (let i = 0; i < evalEpisodes; i++) {
    const episode = await playEpisode(evaluator, evalGame, { pace });
    if (episode === null) continue;
    evalSteps += episode.steps;
    const version = episode.versions[0];
    byVersion.set(version, [...(byVersion.get(version) ?? []), episode.return]);
  }
  for (const [version, returns] of byVersion) {
    const row = { minutes: elapsed(), taught_steps: taughtSteps, eval_steps: evalSteps, served, version, returns,
                  mean: mean(returns), taught_mean: recent.length ? mean(recent) : null, taught_episodes: recent.length };
    rows.push(row);
    evaluatedUpTo = Math.max(evaluatedUpTo, version);
    console.log([row.minutes.toFixed(1), taughtSteps, `v${served}`, `v${version}`, returns.join(","), row.mean.toFixed(2),
                 row.taught_mean === null ? "-" : `${row.taught_mean.toFixed(2)} (${recent.length})`].join("\t"));
  }
  recent = [];
}

await evaluate(); // the first version: random weights
while (elapsed() < minutes) {
  const episode = await playEpisode(teacher, game, {
    pace, onStep: (_, step, version) => { if (step !== null) taughtSteps += 1; served = version; },
  });
  if (episode === null) continue;
  recent.push(episode.return);
  if (performance.now() - lastCheck > 5000) { // a new export: evaluate it
    lastCheck = performance.now();
    if ((await newest()) > evaluatedUpTo) await evaluate();
  }
}

console.log("\n| minutes | client steps taught | version serving the teaching session | version evaluated | evaluation returns | mean | taught episodes' mean return since the last evaluation |");
console.log("|---|---|---|---|---|---|---|");
for (const r of rows) {
  console.log(`| ${r.minutes.toFixed(1)} | ${r.taught_steps.toLocaleString("en")} | v${r.served} | v${r.version} | ${r.returns.join(", ")} | ` +
              `${r.mean.toFixed(2)} | ${r.taught_mean === null ? "–" : `${r.taught_mean.toFixed(2)} (${r.taught_episodes})`} |`);
}
if (args.json) writeFileSync(args.json, JSON.stringify({ server, minutes, rate, seed, rows }, null, 1));
