"""
Mamba's selective scan for MambaConfig.scan="compiled": the recurrence of baselines.selective_scan,

    h_t = a_t * h_{t-1} + b_t,  a_t = exp(delta_t A),  b_t = delta_t u_t B_t,  y_t = h_t . C_t,

chunk by chunk, with each chunk's forward and its backward one torch.compile'd step loop (inductor's C++ on a CPU).
Inductor fuses each function's elementwise steps into a few C++ loops, instead of one pass over memory per
operation on (B, E, N) or (B, L, E, N) tensors, which is where the plain scans (log-depth or step by step) spend
their time.

The backward is written out, not left to autograd: autograd of the compiled loop needs the forward run again
under a checkpoint per chunk to keep memory linear, and took 3.3 times as long (RESULTS.md, Table 2). What is kept
for backward is the inputs and one (B, E, N) state per chunk, so memory grows linearly in T; the backward
recomputes a chunk's states from the state before it, then runs the gradients' recurrence back in time.

Compiled once for a chunk's shape (dynamic=False), so compile time does not grow with T; a shorter last chunk, and
generation's single steps, run the same functions uncompiled. The reference is baselines.selective_scan with
autograd: tests/test_models.py holds these functions, compiled and not, to its values and gradients.

Shapes: B batch, L chunk length, E channels (d_inner), N d_state.
"""

import functools

import torch


def chunk_forward(delta, A, u, Bm, Cm, h):
    """One chunk, step by step. delta, u (B, L, E); A (E, N); Bm, Cm (B, L, N); h (B, E, N), the state before the
    chunk. Returns y (B, L, E) and the state after it (B, E, N)."""
    ys = []
    for t in range(delta.size(1)):
        a = torch.exp(delta[:, t, :, None] * A)  # (B, E, N)
        h = a * h + (delta[:, t] * u[:, t])[..., None] * Bm[:, t, None, :]  # (B, E, N)
        ys.append((h * Cm[:, t, None, :]).sum(-1))  # (B, E)
    return torch.stack(ys, dim=1), h  # (B, L, E), (B, E, N)


def chunk_backward(delta, A, u, Bm, Cm, h0, dy, dh):
    """The gradients of chunk_forward(delta, A, u, Bm, Cm, h0) given dy (B, L, E), the loss's gradient at y, and dh
    (B, E, N), at the last state. Returns the gradients at delta, A, u, Bm, Cm and h0, in their shapes."""
    a = torch.exp(delta[..., None] * A)  # (B, L, E, N)
    b = (delta * u)[..., None] * Bm[:, :, None, :]  # (B, L, E, N)
    before, h = [], h0
    for t in range(delta.size(1)):  # the chunk's states again, from the one before it
        before.append(h)  # h_{t-1}
        h = a[:, t] * h + b[:, t]
    g, gs = dh, []
    for t in reversed(range(delta.size(1))):
        g = g + dy[:, t, :, None] * Cm[:, t, None, :]  # g_t = dloss/dh_t: through y_t, and through h_{t+1}
        gs.append(g)
        g = a[:, t] * g  # through h_t = a_t h_{t-1} + b_t, to h_{t-1}
    G = torch.stack(gs[::-1], dim=1)  # (B, L, E, N), g_t = dloss/db_t
    h_before = torch.stack(before, dim=1)  # (B, L, E, N)
    g_log_a = G * h_before * a  # dloss/d(delta_t A), as dloss/da_t = g_t h_{t-1} and da_t = a_t d(delta_t A)
    g_B = (G * Bm[:, :, None, :]).sum(-1)  # (B, L, E): dloss/d(delta_t u_t)
    d_delta = (g_log_a * A).sum(-1) + g_B * u  # (B, L, E)
    d_A = (g_log_a * delta[..., None]).sum((0, 1))  # (E, N)
    d_u = g_B * delta  # (B, L, E)
    d_Bm = (G * (delta * u)[..., None]).sum(2)  # (B, L, N)
    d_Cm = ((a * h_before + b) * dy[..., None]).sum(2)  # (B, L, N): y_t = h_t . C_t
    return d_delta, d_A, d_u, d_Bm, d_Cm, g  # g is now dloss/dh0


@functools.cache
def compiled(fn):
    return torch.compile(fn, dynamic=False)


def chunks_of(L, *xs):
    """The chunks of L time steps of each (B, T, ...) tensor, as contiguous copies (small, (B, L, E) at most): a
    view's strides depend on T, and would compile once per T. A list with one tuple per chunk."""
    return list(zip(*([c.contiguous() for c in x.split(L, dim=1)] for x in xs)))


def step_for(fn, compile, length, L):
    """fn compiled for full chunks; a shorter last chunk runs it uncompiled, as a new shape would compile again."""
    return compiled(fn) if compile and length == L else fn


class ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, delta, A, u, Bm, Cm, h0, chunk_size, compile):
        states, ys, h = [], [], h0
        for d, uc, bc, cc in chunks_of(chunk_size, delta, u, Bm, Cm):
            states.append(h)
            y, h = step_for(chunk_forward, compile, d.size(1), chunk_size)(d, A, uc, bc, cc, h)
            ys.append(y)
        ctx.save_for_backward(delta, A, u, Bm, Cm, *states)
        ctx.chunk_size, ctx.compile = chunk_size, compile
        return torch.cat(ys, dim=1), h  # (B, T, E), (B, E, N)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dh):
        delta, A, u, Bm, Cm, *states = ctx.saved_tensors
        L = ctx.chunk_size
        grads, d_A = [], torch.zeros_like(A)
        for (d, uc, bc, cc, dyc), h0 in reversed(list(zip(chunks_of(L, delta, u, Bm, Cm, dy), states))):
            step = step_for(chunk_backward, ctx.compile, d.size(1), L)
            d_delta, d_Ac, d_u, d_Bm, d_Cm, dh = step(d, A, uc, bc, cc, h0, dyc, dh)
            d_A = d_A + d_Ac
            grads.append((d_delta, d_u, d_Bm, d_Cm))
        d_delta, d_u, d_Bm, d_Cm = (torch.cat(g[::-1], dim=1) for g in zip(*grads))
        return d_delta, d_A, d_u, d_Bm, d_Cm, dh, None, None


@torch.compiler.disable
def compiled_scan(delta, A, u, Bm, Cm, h0=None, chunk_size=32, compile=True):
    """baselines.selective_scan's inputs and outputs: delta, u (B, T, E); A (E, N); Bm, Cm (B, T, N); h0 (B, E, N)
    or None. compile=False runs the same chunk functions uncompiled (for the tests). Left out of a whole-model
    torch.compile (train.py --compile), which would unroll the loop over chunks and compile for minutes at long T:
    the loop stays Python, and each chunk calls the one compiled step loop."""
    if h0 is None:
        h0 = torch.zeros(u.size(0), A.size(0), A.size(1), device=u.device, dtype=torch.float32)
    return ChunkedScan.apply(delta, A, u, Bm, Cm, h0, chunk_size, compile)
