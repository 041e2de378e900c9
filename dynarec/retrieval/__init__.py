"""Two-tower retrieval: towers, scores, losses (in-batch softmax + logQ, sampled softmax, Gramian penalty
with SOGram / SAGram), exact full-corpus metrics and a FAISS item index. Every function and module works on
plain tensors (embedded features in, vectors / losses / metric dicts out)."""
