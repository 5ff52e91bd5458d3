"""Golden values for core/tests/optim_golden.rs (PyTorch CPU, torch.optim.SGD and the
reference train.py's adjust_learning_rate). Run: python3 tools/golden/optim_values.py
and paste the printed literals."""
import math
import numpy as np
import torch


def lit(t):
    """Shortest decimal that round-trips to the same f32."""
    vals = torch.as_tensor(t, dtype=torch.float32).flatten().numpy()
    return "[" + ", ".join(str(np.float32(v)) for v in vals) + "]"


def sgd_case(name, n, lrs, **kw):
    g = torch.Generator().manual_seed(7)
    p0 = torch.randn(n, generator=g)
    grads = [torch.randn(n, generator=g) for _ in lrs]
    p = p0.clone().requires_grad_(True)
    opt = torch.optim.SGD([p], lr=lrs[0], **kw)
    print(f"// {name}")
    print(f"const {name}_P0: [f32; {n}] = {lit(p0)};")
    for k, (lr, gr) in enumerate(zip(lrs, grads)):
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = gr.clone()
        opt.step()
        print(f"const {name}_G{k}: [f32; {n}] = {lit(gr)};")
        print(f"const {name}_P{k + 1}: [f32; {n}] = {lit(p.detach())};")
    print(f"const {name}_BUF: [f32; {n}] = {lit(opt.state[p]['momentum_buffer'])};")


sgd_case("NEST", 37, [0.8, 0.5, 0.1], momentum=0.9, weight_decay=1e-4, nesterov=True)
sgd_case("PLAIN", 37, [0.1, 0.1, 0.05], momentum=0.9, weight_decay=5e-4, nesterov=False)


# The reference's adjust_learning_rate (cos_lr and step branches), epoch 1-based.
def cosine(base, epochs, epoch):
    if epoch <= 10:
        return 0.5 * base * (1 + math.cos(math.pi * epoch / epochs)) * (epoch - 1) / 10 + 0.01 * (11 - epoch) / 10
    return 0.5 * base * (1 + math.cos(math.pi * epoch / epochs))


def step(base, epoch, changing=(80, 120), decay=0.1):
    lr = base
    for e in range(1, epoch + 1):  # adjust_learning_rate(epoch) is called every epoch
        if e in changing:
            lr = lr * decay
    return lr


ep = [1, 5, 10, 11, 200, 400]
print("// cosine base 0.8, E = 400 at", ep)
print(lit(np.array([cosine(0.8, 400, e) for e in ep], dtype=np.float32)))
print("// cosine base 0.1, E = 400 at", ep)
print(lit(np.array([cosine(0.1, 400, e) for e in ep], dtype=np.float32)))
eps = [1, 5, 10, 11, 79, 80, 81, 119, 120, 121, 200, 400]
print("// step base 0.8 at", eps)
print(lit(np.array([step(0.8, e) for e in eps], dtype=np.float32)))
