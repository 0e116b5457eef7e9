"""Defaults shared by every configuration; each config file overrides what its data, SDE and model need."""
import ml_collections


def get_default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42
    # CPU threads for torch (0: torch's default). Small point-data models run fastest on one
    # thread: a thread hand-off costs more than their matrix products.
    config.num_threads = 1
    # "auto" (CUDA when available), "cpu", "cuda" or "cuda:<index>". The 2-D toys' small MLPs
    # run fastest on the CPU, where a kernel launch costs more than their arithmetic.
    config.device = "cpu"
    # torch.compile the network's forward for training (sampling and likelihoods run it uncompiled).
    config.compile = False

    config.data = data = ml_collections.ConfigDict()
    data.kind = "points"          # "points" (2-D toys) or "images"
    data.name = "swiss_roll"      # toy_data.DATASETS for points
    data.n_train = 20000
    data.n_test = 2000

    config.sde = sde = ml_collections.ConfigDict()
    sde.name = "vpsde"            # vpsde | subvpsde | vesde
    sde.N = 1000
    sde.beta_min = 0.1
    sde.beta_max = 20.0           # with schedule="cosine", set 999.0: where the cosine schedule is cut
    sde.schedule = "linear"       # linear | cosine (VP-type)
    sde.sigma_min = 0.01
    sde.sigma_max = 50.0
    sde.cosine_s = 0.008          # the cosine schedule's offset s (VP-type)

    config.model = model = ml_collections.ConfigDict()
    model.name = "mlp"
    model.ema_rate = 0.999
    # What the network predicts: "auto" (the SDE's default: eps for VP-type, score for VE), "eps",
    # "score", "x0" or "v". models/precond.py turns each into scores and x0 estimates.
    model.parametrization = "auto"
    model.dim = 2
    model.hidden = 128
    model.num_layers = 3
    model.embedding_dim = 64
    model.embedding_type = "positional"
    model.fourier_scale = 1.0
    model.scale_by_sigma = False
    model.scale_input_by_sigma = False
    # Class labels (every network takes them): num_classes = K > 0 makes the network class-conditional,
    # trained on the data's labels, with label K standing for "no label"; p_uncond is the chance that
    # training replaces a label by K, which classifier-free guidance needs (e.g. 0.1 to 0.2).
    model.num_classes = 0
    model.p_uncond = 0.0
    # A variance head (models/variance_head.py): the network outputs 2C channels, its prediction and the
    # mixing vector v of the reverse variance exp(v log beta + (1 - v) log beta~) (improved DDPM).
    model.learn_variance = False
    # Super-resolution (images; models/super_resolution.py): sr_from = the low resolution the network is
    # conditioned on (0: none), up-sampled by sr_upsample (bilinear | nearest) and concatenated to its input.
    model.sr_from = 0
    model.sr_upsample = "bilinear"
    model.sr_p_uncond = 0.0  # the probability of dropping the low resolution in training (classifier-free guidance)

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 512
    training.n_iters = 6000
    training.continuous = True
    training.weighting = "std2"   # std2 | likelihood
    training.importance_sampling = False
    training.reduce = "mean"      # mean | sum over dimensions
    training.eps = 1e-5           # smallest training time
    # simple: the DSM loss above | hybrid: L_simple + vlb_weight L_vlb, the mean's gradient stopped in L_vlb
    # (needs model.learn_variance) | vlb: L_vlb alone. L_vlb is the discrete chain's bound on 8-bit images
    # (score_toolkit/vlb_losses.py), on the chain's times; it needs training.continuous = True.
    training.objective = "simple"
    training.vlb_weight = 0.001   # lambda of the hybrid objective
    training.vlb_steps = 0        # steps of the chain L_vlb is taken on; 0: the SDE's whole N-step chain
    training.time_sampler = "uniform"  # uniform | loss_second_moment: the chain's terms drawn by importance
    training.time_history = 10    # loss_second_moment: losses kept per term (a warm-up until every term has them)
    training.time_uniform_mix = 0.001  # loss_second_moment: the uniform share of its probabilities
    # Super-resolution training (score_toolkit/super_resolution.py): the low resolution of each image, blurred
    # with probability sr_blur_prob (width ~ U[sr_blur_sigma_min, sr_blur_sigma_max] low-resolution pixels),
    # then noised by the SDE's forward marginal at a level s ~ U[0, sr_aug_max] (a fraction of T).
    training.sr_aug_max = 0.0
    training.sr_blur_prob = 0.0
    training.sr_blur_sigma_min = 0.4
    training.sr_blur_sigma_max = 0.6
    training.log_freq = 200
    training.snapshot_freq = 2000
    training.checkpoint_freq = 1000
    training.keep_checkpoints = 3
    # fp32 | tf32 (CUDA matmuls and convolutions in TF32; plain fp32 on the CPU) | bf16 | fp16:
    # bf16 and fp16 run the forward under torch.autocast, fp16 with a loss scaler whose state is
    # checkpointed. Weights, EMA and Adam's moments stay fp32; sampling and likelihoods run in fp32.
    training.precision = "fp32"
    training.channels_last = False  # images: network and batches in channels_last memory format

    config.optim = optim = ml_collections.ConfigDict()
    optim.lr = 2e-3
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 200            # linear learning-rate warm-up steps
    optim.grad_clip = 1.0         # max gradient norm; 0 turns clipping off
    optim.impl = "default"        # Adam's implementation: default | foreach | fused (one kernel; not on every device)

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"        # pc | ode | any name in samplers.list_samplers()
    sampling.steps = 20           # steps of the few-step samplers (ddim, dpm_solver, dpmpp_*, heun)
    sampling.grid = ""            # time grid of those samplers: "" (the sampler's own default), samplers.list_grids(),
                                  # or "fitted": fitted to the checkpoint once (samplers.fit_grid), kept in the samples folder
    sampling.fit_pilot = 1024     # "fitted": pilot draws the grid is fitted on
    sampling.fit_evals = 0        # "fitted": sampler runs on the pilot at most; 0 = 100 * sampling.steps
    sampling.eta = 0.0            # ddim: 0 deterministic, 1 ancestral
    sampling.order = 3            # dpm_solver: 1, 2 or 3
    sampling.s_churn = 0.0        # heun: EDM's stochasticity
    sampling.variance = "fixed_small"  # ancestral: fixed_small | fixed_large | learned_range (a variance head) |
                                  # analytic (Analytic-DPM: Gamma estimated on training data, kept in the samples folder)
    sampling.gamma_images = 1024  # analytic: training images Gamma = E||eps_hat||^2 / d is estimated on
    # Class-conditional sampling (config.model.num_classes > 0, or a noise-conditional classifier):
    sampling.aug_level = 0.0      # super-resolution models: the level s of their low-resolution input's augmentation
    sampling.cascade_from = ""    # --mode cascade: the workdir of the stage below this super-resolution model
    sampling.truncated = False    # --mode cascade: the stage below stops at aug_level T (truncated augmentation)
    sampling.class_label = -1     # -1: every class in turn (grids: one row per class); k: class k only
    sampling.guidance = "cfg"     # cfg (classifier-free) | classifier (needs sampling.classifier_path)
    sampling.guidance_scale = 0.0 # w: (1 + w) s(x, t, y) - w s(x, t, null), or the classifier gradient's scale
    sampling.classifier_path = "" # a noise-conditional classifier written by --mode noisy_classifier
    sampling.classifier_steps = 2000  # its training steps
    # Inverse problems (images; score_toolkit/inverse_problems.py): sample x given y = A x + sigma_y n of the
    # observed images. sampling.method: a posterior sampler (particle | ddrm | pigdm | dps), or for inpaint and
    # colorize any sampler but "adaptive", which then completes the image by replacement (RePaint with resample > 1).
    sampling.task = "none"        # none | inpaint | colorize | superres | linear
    sampling.observed = ""        # the observed image(s) at the data's size: a .png, or a .npz of uint8 "samples" [N, C, H, W]
    sampling.mask = "right"       # inpaint: the part to fill in: left | right | top | bottom | center | random75
                                  # (3/4 of the pixels), or a mask .png/.npz (1 = known)
    sampling.resample = 1         # RePaint's resampling passes per interval (1: score_sde's replacement)
    sampling.sigma_y = 0.0        # posterior samplers: the observation noise's std, in model space
    sampling.sr_factor = 4        # superres: y = the means of sr_factor x sr_factor blocks
    sampling.matrix = ""          # linear: a .npz holding A [m, C H W], acting on model-space images
    sampling.particles = 16       # particle: particles per sample (a batch runs batch_size x particles rows)
    sampling.ddrm_eta = "0.85"    # ddrm: eta in [0, 1] (the paper's 0.85), or "markov" (samplers/ddrm.py)
    sampling.ddrm_eta_b = 1.0     # ddrm: eta_b in [0, 1]
    sampling.pigdm_eta = 1.0      # pigdm: the DDIM step's eta (1: ancestral)
    sampling.dps_zeta = 1.0       # dps: the step size on grad ||y - A x0_hat||
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    sampling.snr = 0.16
    sampling.n_steps = 1
    sampling.corrector_options = ml_collections.ConfigDict({"norm": "batch"})  # langevin: "batch" or "sample" norms
    sampling.N = 500              # time steps of the PC sampler
    sampling.eps = 1e-3           # last time of the sampler
    sampling.denoise = True
    sampling.ode_method = "dopri5"
    sampling.ode_steps = 100      # steps of a fixed-step ODE method
    sampling.rtol = 1e-5
    sampling.atol = 1e-5
    sampling.n_samples = 2000     # samples per snapshot
    sampling.batch_size = 2000

    # Distillation to a few network calls (--mode distill; score_toolkit/distillation.py). The run trains a
    # student of this config's network, started from the teacher's weights, into its own workdir.
    config.distill = distill = ml_collections.ConfigDict()
    distill.method = ""           # "" (none) | progressive | consistency_distillation | consistency_training
    distill.teacher = ""          # the teacher: a trained workdir, or weights written by --mode export
    distill.guidance_scale = 0.0  # w > 0: the student learns the classifier-free guided teacher at w
    # progressive: halvings teacher_steps -> ... -> final_steps of DDIM on the named grid, each training
    # steps_per_halving steps (training.n_iters must be their total); the x-space loss's weighting
    distill.grid = "uniform_t"    # uniform_t | uniform_log_snr | karras | quadratic
    distill.teacher_steps = 64
    distill.final_steps = 4
    distill.steps_per_halving = 1000
    # the loss's weighting; "": the method's default, truncated_snr for progressive (max(SNR, 1) | snr_plus_one |
    # snr), uniform for consistency models (| inverse_delta: 1 / (nu_{n+1} - nu_n))
    distill.weighting = ""
    # consistency models: the boundary sigma_min (the noise level sigma / alpha where f(x) = x; 0: that of
    # sampling.eps), the data's std, the boundaries' schedule N(k) and the target's EMA mu(k)
    distill.sigma_min = 0.0
    distill.sigma_data = 0.5
    distill.schedule = "fixed"    # fixed (N = s1, mu = mu0) | song | improved
    distill.s0 = 2
    distill.s1 = 18
    distill.mu0 = 0.95
    distill.solver = "heun"       # consistency_distillation's teacher step: euler | heun | ddim
    distill.loss = "l2"           # l2 | pseudo_huber
    distill.huber_c = 0.0         # pseudo_huber's c; 0: 0.00054 sqrt(dimensions)
    distill.times = "uniform"     # uniform | lognormal (P_mean, P_std below) over the boundaries' pairs
    distill.p_mean = -1.1
    distill.p_std = 2.0

    # The autoencoder of latent diffusion (--mode autoencoder; score_toolkit/autoencoder_run.py), trained on
    # config.data into its own workdir, which then holds autoencoder.pt: its weights and latent scale.
    config.autoencoder = ae = ml_collections.ConfigDict()
    ae.kind = "kl"                # kl (a diagonal Gaussian posterior, KL-regularised) | vq (a codebook)
    ae.nf = 32                    # the encoder's and decoder's base width
    ae.ch_mult = (1, 2, 2)        # len m + 1 levels: the downsampling factor f = 2^m
    ae.num_res_blocks = 1
    ae.latent_channels = 4        # kl: the latents' channels; vq: the codes' dimension
    ae.dropout = 0.0
    ae.rec_loss = "l1"            # l1 | l2 | nll (the Gaussian decoder's NLL, which learns its scale)
    ae.kl_weight = 1e-6           # kl: the KL term's weight (latent-diffusion's f = 4 value)
    ae.n_codes = 256              # vq: the codebook's size
    ae.beta = 0.25                # vq: the commitment weight, on the encoder's term
    ae.ema_codebook = False       # vq: the codebook by moving averages of its assignments, not by its loss
    ae.ema_decay = 0.99
    ae.disc_weight = 0.0          # > 0: a PatchGAN hinge loss with the adaptive weight, from step disc_start
    ae.disc_start = 0
    ae.disc_nf = 32
    ae.disc_layers = 2
    ae.perceptual_weight = 0.0    # > 0: squared distance of the feature classifier's (eval.feature_path) features
    ae.batch_size = 64
    ae.n_iters = 5000
    ae.lr = 2e-4
    ae.log_freq = 50
    ae.checkpoint_freq = 500
    ae.keep_checkpoints = 3
    ae.n_eval = 2000              # test images its PSNR, reconstruction FID and codebook usage are measured on

    # A latent model (Rombach et al. 2022): config.model is a score network on the latents of this
    # autoencoder (its model.num_channels / image_size are the latents'); samples are decoded to images.
    config.latent = latent = ml_collections.ConfigDict()
    latent.autoencoder = ""       # "" (a pixel model) | a --mode autoencoder workdir, or its autoencoder.pt
    latent.sample_posterior = True  # kl: train on draws z ~ q(z | x) (else its mean)
    latent.decoder = "gaussian"   # the image NLL bound's decoder p(x | z): gaussian | discretized
    latent.bound_samples = 1      # posterior draws per image in that bound

    # Text conditioning (GLIDE, latent diffusion): an encoder tau(caption) -> context [B, L, D] that the
    # network's cross-attention reads (model.context_dim = D, model.context_resolutions), trained with it.
    config.text = text = ml_collections.ConfigDict()
    text.encoder = ""             # "" (none) | transformer (trained from scratch) | pretrained (frozen, transformers)
    text.captions = "fashion_mnist"  # the captions of the training images (score_toolkit/captions.py)
    text.captions_seed = 0        # draws each image's caption template
    text.held_out = True          # leave captions.HELD_OUT's attribute combinations out of every training caption
    text.vocab_size = 64          # the token table's rows; the vocabulary built from the captions must fit
    text.max_len = 16             # tokens per caption, its start token included
    text.dim = 64
    text.depth = 2
    text.heads = 4
    text.p_uncond = 0.1           # caption dropout: the null caption's share of training, for guidance
    text.pretrained_path = ""     # pretrained: a local folder with a transformers model and tokenizer
    sampling.prompt = ""          # a text model's caption for every sample ("": the null caption)

    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.batch_size = 500
    evaluate.enable_loss = True
    evaluate.enable_nll = True
    evaluate.enable_samples = True
    evaluate.n_nll = 2000         # held-out points whose NLL is computed
    evaluate.divergence = "exact" # exact | rademacher | gaussian
    evaluate.n_probes = 1
    evaluate.nll_rtol = 1e-5
    evaluate.nll_atol = 1e-5
    evaluate.nll_eps = 1e-5
    evaluate.n_samples = 2000
    # The discrete chain's variational bound (likelihood.vlb_bits_per_dim): an upper bound on the discrete
    # model's NLL in bits/dim, reported beside the probability flow's exact NLL (images only).
    evaluate.enable_bound = False
    evaluate.bound_steps = 0      # steps of its strided grid (samplers.ddpm_strided_grid); 0: the whole chain
    evaluate.bound_variance = "fixed_small"  # fixed_small | fixed_large | learned_range | analytic
    evaluate.n_bound = 1000       # test images it is computed on
    evaluate.weights_path = ""    # EMA weights from --mode export; eval and sample use them, not the workdir's checkpoints
    return config
