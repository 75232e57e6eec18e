// Writes src/lib/server/sentences.json: 300 distinct English sentences, the
// same on every run (no randomness). Twenty are hand-written on one clear
// topic each, so a query has a known nearest sentence (the test searches for
// one of them); the rest come from templates over ten everyday topics.
//   node scripts/sentences.mjs
import { writeFileSync } from 'node:fs'

const anchors = [
  'The lighthouse keeper climbed the spiral stairs every evening to light the lamp.',
  'Honeybees perform a waggle dance to tell the hive where the flowers are.',
  'A volcano erupted on the island, sending ash high into the sky.',
  'She renewed her passport at the embassy before the trip to Japan.',
  'The surgeon scrubbed in for a six-hour heart transplant operation.',
  'Penguins huddle together on the Antarctic ice to survive the winter.',
  'The central bank raised interest rates to slow down inflation.',
  'He tuned the strings of his old violin before the concert.',
  'The marathon runner crossed the finish line in just over two hours.',
  'Astronomers discovered a new exoplanet orbiting a distant red dwarf star.',
  'My grandmother bakes sourdough bread every Sunday morning.',
  'The database query was slow until we added an index on the user id column.',
  'A thunderstorm knocked out power across the whole neighbourhood last night.',
  'The chess grandmaster sacrificed her queen to force checkmate in three moves.',
  'Farmers harvested the wheat fields before the autumn rains arrived.',
  'The museum opened a new exhibition of ancient Egyptian mummies.',
  'Our flight to Lisbon was delayed by four hours because of fog.',
  'The toddler built a tall tower of wooden blocks and then knocked it down.',
  'Divers explored the coral reef and photographed a sea turtle.',
  'The detective found a fingerprint on the broken window latch.',
]

const topics = [
  { who: ['A young chef', 'The head cook', 'My neighbour', 'The baker'], did: ['prepared', 'tasted', 'seasoned', 'served'], what: ['a spicy curry', 'a bowl of tomato soup', 'fresh pasta', 'a lemon tart'], when: ['for the guests.', 'before dinner.', 'at the street market.'] },
  { who: ['The striker', 'The goalkeeper', 'Our captain', 'The rookie'], did: ['scored', 'saved', 'celebrated', 'missed'], what: ['a penalty', 'a late goal', 'a header', 'a free kick'], when: ['in the final minute.', 'during the derby.', 'in front of a packed stadium.'] },
  { who: ['The programmer', 'A junior developer', 'The security team', 'Our intern'], did: ['fixed', 'reviewed', 'deployed', 'rewrote'], what: ['the login service', 'a memory leak', 'the build pipeline', 'the payment API'], when: ['on Friday afternoon.', 'after the outage.', 'before the release.'] },
  { who: ['The gardener', 'My uncle', 'A volunteer', 'The farmer'], did: ['planted', 'watered', 'pruned', 'picked'], what: ['the rose bushes', 'a row of carrots', 'the apple trees', 'the tomato vines'], when: ['in early spring.', 'after the frost.', 'at sunrise.'] },
  { who: ['The pianist', 'A street musician', 'The choir', 'The drummer'], did: ['performed', 'rehearsed', 'recorded', 'improvised'], what: ['a jazz ballad', 'an old folk song', 'a symphony', 'a new album'], when: ['in the concert hall.', 'late at night.', 'for a small audience.'] },
  { who: ['The investor', 'A small business', 'The pension fund', 'The startup'], did: ['bought', 'sold', 'valued', 'borrowed against'], what: ['government bonds', 'shares in a bank', 'a warehouse', 'its office building'], when: ['after the market crash.', 'at the end of the quarter.', 'despite the recession.'] },
  { who: ['The nurse', 'A family doctor', 'The pharmacist', 'The paramedic'], did: ['checked', 'treated', 'bandaged', 'examined'], what: ['a sprained ankle', "the patient's blood pressure", 'a deep cut', 'a child with a fever'], when: ['at the clinic.', 'in the ambulance.', 'during the night shift.'] },
  { who: ['A backpacker', 'The tour guide', 'Two students', 'The couple'], did: ['hiked', 'explored', 'photographed', 'mapped'], what: ['a mountain trail', 'the old harbour', 'a desert canyon', 'a medieval castle'], when: ['on their holiday.', 'in the summer heat.', 'without a map.'] },
  { who: ['The teacher', 'A professor', 'The librarian', 'A tutor'], did: ['explained', 'graded', 'discussed', 'recommended'], what: ['a history essay', 'the algebra homework', 'a poetry book', 'the science project'], when: ['after class.', 'in the reading room.', 'before the exam.'] },
  { who: ['The mechanic', 'An engineer', 'The pilot', 'A taxi driver'], did: ['repaired', 'inspected', 'refuelled', 'washed'], what: ['the brakes of a truck', 'a jet engine', 'an electric car', 'a rusty bicycle'], when: ['in the garage.', 'at the airport.', 'on a rainy morning.'] },
]

const out = [...anchors]
const seen = new Set(out)
// Walk every topic's combinations in a fixed interleaved order until 300.
for (let n = 0; out.length < 300; n++) {
  const t = topics[n % topics.length]
  const i = Math.floor(n / topics.length)
  const s = `${t.who[i % 4]} ${t.did[Math.floor(i / 4) % 4]} ${t.what[(i + Math.floor(i / 16)) % 4]} ${t.when[(i * 7 + Math.floor(i / 4)) % 3]}`
  if (!seen.has(s)) { seen.add(s); out.push(s) }
  if (n > 100000) throw new Error('not enough distinct sentences')
}
writeFileSync(new URL('../src/lib/server/sentences.json', import.meta.url), JSON.stringify(out, null, 1) + '\n')
console.log(`wrote ${out.length} sentences`)
