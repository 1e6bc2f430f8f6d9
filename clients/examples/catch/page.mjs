// @ts-check
/**
 * The page: plays Catch with the agent a Reverie server serves, teaching it as it plays, and evaluates it
 * every few episodes. Query string: `server` (the Reverie REST address, default http://127.0.0.1:8000;
 * started with `--cors-origin` naming this page's origin), `rate` (steps per second, default 20; 0: as
 * fast as the server answers), `eval_every` (taught episodes between evaluations, default 10),
 * `eval_episodes` (evaluation episodes each time, default 3: the trainer's client_eval_episodes) and
 * `seed`. What it shows is also in `window.catchPage` (returns, evaluations, versions) for scripts.
 */
import { ReverieClient } from "../../ts/dist/index.js";
import { playEpisode, sessionId, ticker } from "./coach.mjs";
import { ACTIONS, BALL_RADIUS, Catch, MAX_STEPS, FALL_STEPS, OBSERVATION_SIZE, PADDLE_HALF_WIDTH } from "./game.mjs";

const params = new URLSearchParams(location.search);
const number = (/** @type {string} */ name, /** @type {number} */ fallback) => {
  const value = Number(params.get(name) ?? fallback);
  return Number.isFinite(value) && value >= 0 ? value : fallback;
};
const server = params.get("server") ?? "http://127.0.0.1:8000";
const rate = number("rate", 20);
const evalEvery = Math.max(1, Math.round(number("eval_every", 10)));
const evalEpisodes = Math.max(1, Math.round(number("eval_episodes", 3)));
const seed = Math.round(number("seed", Math.floor(Math.random() * 2 ** 31)));

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const field = /** @type {HTMLCanvasElement} */ ($("field"));
const chart = /** @type {HTMLCanvasElement} */ ($("chart"));

const state = {
  server,
  session: sessionId("catch"),
  evalSession: sessionId("catch-eval"),
  /** @type {number | null} */ served: null,
  /** @type {number[]} the taught episodes' returns, in order */ returns: [],
  /** @type {number[]} and their lengths in steps */ lengths: [],
  steps: 0,
  /** @type {{ version: number, return: number, steps: number, after: number }[]} evaluation episodes (`after`: taught episodes before it) */
  evaluations: [],
  /** @type {string[]} */ errors: [],
};
Object.assign(window, { catchPage: state });

function status(/** @type {string} */ text) {
  $("status").textContent = text;
}

function showError(/** @type {unknown} */ err) {
  const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  state.errors.push(text);
  $("error").textContent = `${new Date().toLocaleTimeString()} ${text}`;
}

// ------------------------------------------------------------------ drawing
function drawField(/** @type {Catch} */ game, /** @type {boolean} */ evaluating) {
  const ctx = /** @type {CanvasRenderingContext2D} */ (field.getContext("2d"));
  const { width: w, height: h } = field;
  const px = (/** @type {number} */ x) => ((x + 1) / 2) * w;
  const py = (/** @type {number} */ y) => ((1 - y) / 2) * (h - 16) + 4;
  field.classList.toggle("evaluating", evaluating);
  ctx.fillStyle = "#13202e";
  ctx.fillRect(0, 0, w, h);
  ctx.fillStyle = "#f2c14e";
  ctx.beginPath();
  ctx.arc(px(game.ball.x), py(game.ball.y), (BALL_RADIUS * w) / 2, 0, 2 * Math.PI);
  ctx.fill();
  ctx.fillStyle = evaluating ? "#e0a030" : "#8fd3ff";
  ctx.fillRect(px(game.paddle - PADDLE_HALF_WIDTH), h - 12, PADDLE_HALF_WIDTH * w, 8);
  ctx.fillStyle = "#fff";
  ctx.font = "16px system-ui, sans-serif";
  ctx.fillText(`score ${game.score}`, 8, 20);
  ctx.fillText(evaluating ? "evaluation" : `step ${game.t}/${MAX_STEPS}`, w - 110, 20);
}

function drawChart() {
  const ctx = /** @type {CanvasRenderingContext2D} */ (chart.getContext("2d"));
  const { width: w, height: h } = chart;
  const pad = 28, top = MAX_STEPS / FALL_STEPS;
  const n = Math.max(state.returns.length, 1);
  const x = (/** @type {number} */ i) => pad + (i / Math.max(n - 1, 1)) * (w - pad - 8);
  const y = (/** @type {number} */ r) => h - pad - (r / top) * (h - pad - 8);
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#ddd";
  ctx.fillStyle = "#777";
  ctx.font = "11px system-ui, sans-serif";
  for (let r = 0; r <= top; r += 2) {
    ctx.beginPath();
    ctx.moveTo(pad, y(r));
    ctx.lineTo(w - 8, y(r));
    ctx.stroke();
    ctx.fillText(String(r), 6, y(r) + 4);
  }
  ctx.fillText(`taught episodes: ${state.returns.length}`, pad, h - 8);
  ctx.fillStyle = "#8fb3d9";
  state.returns.forEach((r, i) => ctx.fillRect(x(i) - 1.5, y(r) - 1.5, 3, 3));
  ctx.strokeStyle = "#1f5fa8";
  ctx.lineWidth = 2;
  ctx.beginPath();
  state.returns.forEach((_, i) => {
    const recent = state.returns.slice(Math.max(0, i - 19), i + 1);
    const mean = recent.reduce((a, b) => a + b, 0) / recent.length;
    if (i === 0) ctx.moveTo(x(i), y(mean));
    else ctx.lineTo(x(i), y(mean));
  });
  ctx.stroke();
  ctx.lineWidth = 1;
  ctx.fillStyle = "#e0a030";
  for (const e of state.evaluations) ctx.fillRect(x(Math.max(e.after - 1, 0)) - 3, y(e.return) - 3, 6, 6);
  chart.dataset.points = String(state.returns.length + state.evaluations.length);
}

function showServed(/** @type {number} */ version) {
  if (state.served === version) return;
  state.served = version;
  $("served").dataset.version = String(version);
  $("served").textContent = `v${version}`;
}

function showTaught() {
  const { returns } = state;
  $("episodes").dataset.count = String(returns.length);
  $("episodes").textContent = String(returns.length);
  const recent = returns.slice(-20);
  $("recent").textContent = (recent.reduce((a, b) => a + b, 0) / recent.length).toFixed(2);
  drawChart();
}

function showEvaluations() {
  /** @type {Map<number, number[]>} */
  const byVersion = new Map();
  for (const e of state.evaluations) byVersion.set(e.version, [...(byVersion.get(e.version) ?? []), e.return]);
  const body = /** @type {HTMLElement} */ ($("evals").querySelector("tbody"));
  body.replaceChildren(...[...byVersion].reverse().map(([version, returns]) => {
    const row = document.createElement("tr");
    row.dataset.version = String(version);
    const mean = returns.reduce((a, b) => a + b, 0) / returns.length;
    for (const text of [`v${version}`, returns.join(", "), mean.toFixed(2)]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  }));
  $("evals").dataset.count = String(state.evaluations.length);
  const last = state.evaluations[state.evaluations.length - 1];
  if (last !== undefined) {
    const returns = byVersion.get(last.version) ?? [];
    const mean = returns.reduce((a, b) => a + b, 0) / returns.length;
    $("greedy").dataset.version = String(last.version);
    $("greedy").dataset.return = String(mean);
    $("greedy").textContent = `v${last.version}: ${mean.toFixed(2)} (mean of ${returns.length})`;
  }
  drawChart();
}

// ------------------------------------------------------------------ playing
const sleep = (/** @type {number} */ ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function connect(/** @type {ReverieClient} */ client) {
  status(`waiting for ${server} …`);
  await client.waitReady(120_000, 500);
  const model = await client.getModel();
  const { observation_space: obs, action_space: actions } = model.manifest;
  if (obs.shape.length !== 1 || obs.shape[0] !== OBSERVATION_SIZE || actions.kind !== "discrete" || actions.n !== ACTIONS) {
    throw new Error(`${server} serves ${model.manifest.env_id} (observations ${JSON.stringify(obs.shape)}, ` +
                    `${actions.kind} actions), not Catch: start it with --spaces clients/examples/catch/spaces.json`);
  }
  showServed(model.model_version);
  return model;
}

async function main() {
  $("server").textContent = server;
  $("session").dataset.id = state.session;
  $("session").textContent = `${state.session} (evaluations: ${state.evalSession})`;
  const client = new ReverieClient(server, { retries: 5 });
  const model = await connect(client);
  status(`playing ${model.manifest.env_id} at ${rate > 0 ? `${rate} steps/s` : "the server's pace"}, ` +
         `${evalEpisodes} evaluation episodes every ${evalEvery} taught ones`);
  const teacher = client.session(state.session);
  const evaluator = client.session(state.evalSession, { evaluate: true });
  const game = new Catch(seed), evalGame = new Catch(seed + 1);
  const pace = ticker(rate);
  const taught = (/** @type {Catch} */ g, /** @type {unknown} */ step, /** @type {number} */ version) => {
    showServed(version);
    drawField(g, false);
    $("score").textContent = String(g.score);
    if (step !== null) {
      state.steps += 1;
      $("steps").dataset.count = String(state.steps);
      $("steps").textContent = String(state.steps);
    }
  };
  const evaluating = (/** @type {Catch} */ g) => drawField(g, true);
  for (;;) {
    try {
      const episode = await playEpisode(teacher, game, { onStep: taught, pace });
      if (episode === null) continue;
      state.returns.push(episode.return);
      state.lengths.push(episode.steps);
      showTaught();
      if (state.returns.length % evalEvery !== 0) continue;
      for (let i = 0; i < evalEpisodes; i++) {
        const evaluation = await playEpisode(evaluator, evalGame, { onStep: evaluating, pace });
        if (evaluation === null) continue;
        state.evaluations.push({ version: evaluation.versions[0], return: evaluation.return, steps: evaluation.steps,
                                 after: state.returns.length });
        showEvaluations();
      }
    } catch (err) {
      showError(err);
      await sleep(1000);
    }
  }
}

main().catch((err) => {
  status("stopped");
  showError(err);
});
