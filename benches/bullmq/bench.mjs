// BullMQ 5 throughput on the same Redis as the orchestrator's queue benchmark: `n` no-op jobs
// added in bulk (removeOnComplete), then one Worker with the given concurrency drains them.
// Usage: node bench.mjs <redis port> <jobs> <concurrency>; prints {"per_s": <jobs per second>,
// plus what Redis spent per job during the drain (INFO cpu / commandstats deltas): CPU µs, round
// trips (scripts and blocking pops) and every command run, those inside scripts included}.
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
const stats = async () => {
  const client = await queue.client;
  const info = await client.info('cpu') + await client.info('commandstats');
  let cpu = 0, trips = 0, all = 0;
  for (const line of info.split('\n')) {
    const c = line.match(/^used_cpu_(sys|user):([\d.]+)/);
    if (c) cpu += Number(c[2]) * 1e6;
    const s = line.match(/^cmdstat_([^:]+):calls=(\d+)/);
    if (s) {
      all += Number(s[2]);
      if (['evalsha', 'eval', 'blmove', 'brpoplpush', 'brpop', 'blmpop', 'bzpopmin'].includes(s[1])) trips += Number(s[2]);
    }
  }
  return { cpu, trips, all };
};
const before = await stats();
const cpuBefore = process.cpuUsage();
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
const cpu = process.cpuUsage(cpuBefore);
const after = await stats();
console.log(JSON.stringify({
  per_s: n / seconds,
  redis_cpu_us_per_job: (after.cpu - before.cpu) / n,
  round_trips_per_job: (after.trips - before.trips) / n,
  // the two INFO calls of this measurement are not the worker's
  commands_per_job: (after.all - before.all - 2) / n,
  node_cpu_us_per_job: (cpu.user + cpu.system) / n,
}));
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
