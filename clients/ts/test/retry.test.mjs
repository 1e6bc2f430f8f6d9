// @ts-check
// Retries, against a real `reverie serve` that has no bundle yet (503 until tests/test_ts_client.py publishes
// one, which it does once this upload's first 503 shows in the server's /metrics) and a closed port:
// safe calls (GETs, uploads) are retried on 503 and on connection errors, others never are.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { ApiError, NetworkError, ReverieClient } from "../dist/index.js";

const PENDING = process.env.REVERIE_PENDING_URL ?? "";
const CLOSED = process.env.REVERIE_CLOSED_URL ?? "";
const OUT = process.env.REVERIE_TS_OUT ?? "";
const OBS = [0.01, 0.02, 0.03, 0.04];

/** A client that counts its retries. */
function counting(url, options = {}) {
  /** @type {import("../dist/index.js").RetryInfo[]} */
  const retries = [];
  return { retries, client: new ReverieClient(url, { retryDelayMs: 20, ...options, onRetry: (r) => retries.push(r) }) };
}

test("no answer at all: a safe call is tried 1 + retries times, an act once; both are NetworkErrors", async () => {
  const { client, retries } = counting(CLOSED, { retries: 2 });
  await assert.rejects(client.getModel(), NetworkError);
  assert.deepEqual(retries.map((r) => [r.method, r.attempt]), [["GET", 1], ["GET", 2]]);
  assert.deepEqual(retries.map((r) => r.delayMs), [20, 40]);  // backing off
  await assert.rejects(client.act(OBS), NetworkError);
  assert.equal(retries.length, 2);
  assert.equal(await client.ready(), false);
});

test("503 before the bundle: act is not retried; an upload is, until it is stored, and once", { timeout: 90_000 }, async () => {
  const { client, retries } = counting(PENDING, { retries: 120, maxRetryDelayMs: 500 });
  assert.equal(await client.ready(), false);
  const err = await client.act(OBS).then(() => assert.fail("acted without a bundle"), (e) => e);
  assert.ok(err instanceof ApiError);
  assert.equal(err.status, 503);
  assert.equal(retries.length, 0);
  const fragment = { episode: `ts-retry-${process.pid}`, index: 0, observations: [OBS, OBS, OBS], actions: [0, 1], rewards: [1, 1] };
  const [stored] = await client.upload([fragment]);
  assert.ok(retries.length >= 1, "the upload met a 503 first");
  assert.ok(retries.every((r) => r.reason === "503" && r.method === "POST" && r.delayMs === 500));  // Retry-After: 1, capped
  assert.equal(stored.stored, true);
  assert.equal(await client.ready(), true);
  const [again] = await client.upload([fragment]);
  assert.deepEqual(again, { ...stored, stored: false });
  writeFileSync(join(OUT, "retry.json"), JSON.stringify({ fragment, seq: stored.seq, retries: retries.length }));
});
