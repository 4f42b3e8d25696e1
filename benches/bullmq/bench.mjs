// BullMQ 5 throughput on the same Redis as the orchestrator's queue benchmark: `n` no-op jobs
// added in bulk (removeOnComplete), then one Worker with the given concurrency drains them.
// Usage: node bench.mjs <redis port> <jobs> <concurrency>; prints {"per_s": <jobs per second>}.
import { Queue, Worker } from 'bullmq';

const [port, n, concurrency] = process.argv.slice(2).map(Number);
const connection = { host: '127.0.0.1', port, maxRetriesPerRequest: null };
const name = `bench-${Date.now()}`;
const queue = new Queue(name, { connection });
for (let i = 0; i < n; i += 1000) {
  const jobs = [];
  for (let j = i; j < Math.min(n, i + 1000); j++) {
    jobs.push({ name: 'ping', data: { n: j }, opts: { removeOnComplete: true } });
  }
  await queue.addBulk(jobs);
}
let done = 0;
const started = process.hrtime.bigint();
const finished = new Promise((resolve) => {
  const worker = new Worker(name, async () => ({ pong: true }), { connection, concurrency });
  worker.on('completed', () => {
    done += 1;
    if (done === n) resolve(worker);
  });
});
const worker = await finished;
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
console.log(JSON.stringify({ per_s: n / seconds }));
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
