/** What a sequence of line numbers says about delivery: none missing, none twice? */
export interface Continuity {
  first: number | null;
  last: number | null;
  count: number;
  /** Numbers between first and last that never arrived. */
  missing: number;
  /** Numbers that arrived more than once, or out of order. */
  duplicates: number;
}

export function continuity(seqs: readonly number[]): Continuity {
  let missing = 0;
  let duplicates = 0;
  for (let i = 1; i < seqs.length; i++) {
    const step = seqs[i]! - seqs[i - 1]!;
    if (step <= 0) duplicates += 1;
    else missing += step - 1;
  }
  return {
    first: seqs.length ? seqs[0]! : null,
    last: seqs.length ? seqs[seqs.length - 1]! : null,
    count: seqs.length,
    missing,
    duplicates,
  };
}
