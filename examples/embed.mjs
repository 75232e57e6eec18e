// The main job: embed a few sentences with the real model and print health.
//   node examples/embed.mjs [sentence ...]
import { embed, health } from 'cuda-engine'

const sentences = process.argv.length > 2
  ? process.argv.slice(2)
  : ['The cat sits on the mat.', 'A feline rests on a rug.', 'Stock markets fell sharply today.']

const t0 = performance.now()
const vectors = await embed(sentences)
const ms = performance.now() - t0

const cos = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) // vectors are L2-normalized
for (const [i, s] of sentences.entries()) {
  console.log(`${JSON.stringify(s)} -> Float32Array(${vectors[i].length}) [${[...vectors[i].slice(0, 4)].map((x) => x.toFixed(4)).join(', ')}, …]`)
}
if (sentences.length > 1) {
  console.log('cosine similarity:')
  for (let i = 0; i < sentences.length; i++)
    for (let j = i + 1; j < sentences.length; j++) console.log(`  [${i}] vs [${j}]: ${cos(vectors[i], vectors[j]).toFixed(4)}`)
}
console.log(`embedded ${sentences.length} sentences in ${ms.toFixed(1)} ms (first call includes loading the model)`)
console.log(JSON.stringify(await health(), null, 2))
