"""DINO (Caron et al. 2021) on a ResNet: the student's softmax over `out_dim` prototypes matches
the momentum teacher's centred, sharpened softmax of the other view (teacher temperature 0.04,
student 0.1, centre momentum 0.9, teacher momentum 0.996 -> 1, all the paper's). Head as
lightly's ResNet-18 example (512-512-64-2048 at feature size 512, weight-normalised last layer).

Two global views only, no multi-crop: every objective here sees the same two views a step, so
compute stays comparable. The centre is lightly's, which all-reduces the batch mean over ranks
itself under DDP, and a persistent buffer, so checkpoints carry it.

Two departures from lightly's head, both to keep its last layer's norm fixed at 1 (DINO's
`norm_last_layer`): lightly freezes the norm `weight_g` by requires_grad=False, which the shared
module's set-up (requires_grad from the trained parts) would undo, so it is a buffer here; and its
old-style weight norm cannot be deep-copied, so the teacher's head is built anew and loaded.
"""

from __future__ import annotations

import math
import warnings

from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead

from fkt.ssl.base import MomentumObjective


class DINO(MomentumObjective):
    name = "dino"
    momentum_start = 0.996
    teacher_temp, student_temp, center_momentum = 0.04, 0.1, 0.9

    def __init__(self, backbone, feat_dim, config):
        super().__init__(backbone, feat_dim, config)
        self.out_dim = self.scaled(2048)
        self.projector = self.head()
        self.loss = DINOLoss(self.out_dim, warmup_teacher_temp=self.teacher_temp, teacher_temp=self.teacher_temp,
                             student_temp=self.student_temp, center_momentum=self.center_momentum)
        self.make_teacher(backbone)

    def head(self) -> DINOProjectionHead:
        with warnings.catch_warnings():  # torch's deprecation of the weight norm lightly uses
            warnings.simplefilter("ignore", FutureWarning)
            head = DINOProjectionHead(self.feat_dim, self.scaled(512), self.scaled(64), self.out_dim)
        norm = head.last_layer.weight_g.detach().clone()
        del head.last_layer.weight_g
        head.last_layer.register_buffer("weight_g", norm)
        return head

    def copy_head(self, name):
        head = self.head()
        head.load_state_dict(getattr(self, name).state_dict())
        return head

    def forward(self, ctx, images, targets=None):
        self.follow(ctx)
        v1, v2, h1, h2 = self.encoded_views(ctx, images)
        student = [self.projector(h1), self.projector(h2)]
        teacher = [self.teacher(ctx, v1), self.teacher(ctx, v2)]
        return self.loss(teacher, student), h1  # each student view against the other's teacher

    def chance(self, batch_size):
        return math.log(self.out_dim)  # a uniform student, whatever the teacher says
