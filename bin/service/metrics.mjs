// The service's own Prometheus metrics, appended to the engine's
// `metrics()` text on GET /metrics (docs/service.md "Metrics", docs/metrics.md "HTTP service").
// Label values come from closed sets (the route table's patterns, or
// "unmatched"; HTTP statuses), so the series count is bounded.

/** Request duration buckets, seconds (0.5 ms .. 60 s). */
const BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

const label = (v) => String(v).replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')

export class HttpMetrics {
  #inFlight = 0
  /** `${route}\t${status}` -> count */
  #requests = new Map()
  /** route -> { counts per bucket (not cumulative), sum, count } */
  #durations = new Map()

  started() {
    this.#inFlight++
  }

  /** A request ended (answered, or the client left: status 499). */
  finished(route, status, seconds) {
    this.#inFlight--
    const r = route ?? 'unmatched'
    const key = `${r}\t${status}`
    this.#requests.set(key, (this.#requests.get(key) ?? 0) + 1)
    let h = this.#durations.get(r)
    if (!h) this.#durations.set(r, (h = { counts: new Array(BUCKETS.length).fill(0), sum: 0, count: 0 }))
    const i = BUCKETS.findIndex((b) => seconds <= b)
    if (i >= 0) h.counts[i]++
    h.sum += seconds
    h.count++
  }

  /** Prometheus text exposition (format 0.0.4). */
  text() {
    const out = [
      '# HELP cuda_service_http_requests_total HTTP requests answered, by route pattern and status (499: the client left).',
      '# TYPE cuda_service_http_requests_total counter',
    ]
    for (const [key, n] of [...this.#requests].sort()) {
      const [route, status] = key.split('\t')
      out.push(`cuda_service_http_requests_total{route="${label(route)}",status="${status}"} ${n}`)
    }
    out.push('# HELP cuda_service_http_request_duration_seconds Time from the request\'s arrival to the end of its reply, by route pattern.')
    out.push('# TYPE cuda_service_http_request_duration_seconds histogram')
    for (const [route, h] of [...this.#durations].sort()) {
      const l = `route="${label(route)}"`
      let cum = 0
      BUCKETS.forEach((b, i) => {
        cum += h.counts[i]
        out.push(`cuda_service_http_request_duration_seconds_bucket{${l},le="${b}"} ${cum}`)
      })
      out.push(`cuda_service_http_request_duration_seconds_bucket{${l},le="+Inf"} ${h.count}`)
      out.push(`cuda_service_http_request_duration_seconds_sum{${l}} ${h.sum}`)
      out.push(`cuda_service_http_request_duration_seconds_count{${l}} ${h.count}`)
    }
    out.push('# HELP cuda_service_http_in_flight Requests being read or answered now (this scrape included).')
    out.push('# TYPE cuda_service_http_in_flight gauge')
    out.push(`cuda_service_http_in_flight ${this.#inFlight}`)
    return `${out.join('\n')}\n`
  }
}
