//! Ember's fused ops on burn's autodiff backend: each is one graph node whose forward is the
//! inner backend's fused kernel and whose backward is the inner backend's fused backward.
//! Only the inputs are kept for the backward pass (statistics and softmax are recomputed).

use super::{EmberBackend, GroupNormOptions};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::ops::{ConvOptions, FloatTensor};

#[derive(Debug)]
struct GroupNormNode;

#[derive(Debug)]
struct GroupNormFilmNode;

#[derive(Debug)]
struct AttentionNode;

#[derive(Debug)]
struct Conv2dNode;

#[derive(Debug)]
struct Conv2dNoBiasNode;

impl<B: EmberBackend> Backward<B, 3> for Conv2dNode {
    type State = (NodeId, NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, w, b, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x);
        let w = checkpointer.retrieve_node_output::<FloatTensor<B>>(w);
        let b = checkpointer.retrieve_node_output::<FloatTensor<B>>(b);
        let g = B::fused_conv2d_backward(x, w, Some(b), grad, options);
        let pairs = [
            (node_x, Some(g.x)),
            (node_w, Some(g.weight)),
            (node_b, g.bias),
        ];
        for (node, value) in pairs {
            if let (Some(node), Some(value)) = (node, value) {
                grads.register::<B>(node.id, value);
            }
        }
    }
}

impl<B: EmberBackend> Backward<B, 2> for Conv2dNoBiasNode {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, w, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x);
        let w = checkpointer.retrieve_node_output::<FloatTensor<B>>(w);
        let g = B::fused_conv2d_backward(x, w, None, grad, options);
        for (node, value) in [(node_x, g.x), (node_w, g.weight)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, value);
            }
        }
    }
}

impl<B: EmberBackend> Backward<B, 3> for GroupNormNode {
    type State = (NodeId, NodeId, NodeId, GroupNormOptions);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, beta, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x);
        let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma);
        let beta = checkpointer.retrieve_node_output::<FloatTensor<B>>(beta);
        let g = B::fused_group_norm_backward(x, gamma, beta, None, grad, options);
        for (node, value) in [(node_x, g.x), (node_gamma, g.gamma), (node_beta, g.beta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, value);
            }
        }
    }
}

impl<B: EmberBackend> Backward<B, 5> for GroupNormFilmNode {
    type State = (NodeId, NodeId, NodeId, NodeId, NodeId, GroupNormOptions);

    fn backward(
        self,
        ops: Ops<Self::State, 5>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta, node_scale, node_shift] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, beta, scale, shift, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x);
        let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma);
        let beta = checkpointer.retrieve_node_output::<FloatTensor<B>>(beta);
        let scale = checkpointer.retrieve_node_output::<FloatTensor<B>>(scale);
        let shift = checkpointer.retrieve_node_output::<FloatTensor<B>>(shift);
        let g = B::fused_group_norm_backward(x, gamma, beta, Some((scale, shift)), grad, options);
        let (dscale, dshift) = match g.film {
            Some((s, t)) => (Some(s), Some(t)),
            None => (None, None),
        };
        let pairs = [
            (node_x, Some(g.x)),
            (node_gamma, Some(g.gamma)),
            (node_beta, Some(g.beta)),
            (node_scale, dscale),
            (node_shift, dshift),
        ];
        for (node, value) in pairs {
            if let (Some(node), Some(value)) = (node, value) {
                grads.register::<B>(node.id, value);
            }
        }
    }
}

impl<B: EmberBackend> Backward<B, 3> for AttentionNode {
    type State = (NodeId, NodeId, NodeId, Option<FloatTensor<B>>, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (q, k, v, bias, scale) = ops.state;
        let q = checkpointer.retrieve_node_output::<FloatTensor<B>>(q);
        let k = checkpointer.retrieve_node_output::<FloatTensor<B>>(k);
        let v = checkpointer.retrieve_node_output::<FloatTensor<B>>(v);
        let g = B::fused_attention_backward(q, k, v, bias, grad, scale);
        for (node, value) in [(node_q, g.query), (node_k, g.key), (node_v, g.value)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, value);
            }
        }
    }
}

impl<B: EmberBackend, C: CheckpointStrategy> EmberBackend for Autodiff<B, C> {
    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        film: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        options: GroupNormOptions,
    ) -> FloatTensor<Self> {
        match film {
            None => match GroupNormNode
                .prepare::<C>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = (
                        prep.checkpoint(&x),
                        prep.checkpoint(&gamma),
                        prep.checkpoint(&beta),
                        options,
                    );
                    let out = B::fused_group_norm(
                        x.primitive,
                        gamma.primitive,
                        beta.primitive,
                        None,
                        options,
                    );
                    prep.finish(state, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fused_group_norm(
                    x.primitive,
                    gamma.primitive,
                    beta.primitive,
                    None,
                    options,
                )),
            },
            Some((scale, shift)) => match GroupNormFilmNode
                .prepare::<C>([
                    x.node.clone(),
                    gamma.node.clone(),
                    beta.node.clone(),
                    scale.node.clone(),
                    shift.node.clone(),
                ])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = (
                        prep.checkpoint(&x),
                        prep.checkpoint(&gamma),
                        prep.checkpoint(&beta),
                        prep.checkpoint(&scale),
                        prep.checkpoint(&shift),
                        options,
                    );
                    let out = B::fused_group_norm(
                        x.primitive,
                        gamma.primitive,
                        beta.primitive,
                        Some((scale.primitive, shift.primitive)),
                        options,
                    );
                    prep.finish(state, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fused_group_norm(
                    x.primitive,
                    gamma.primitive,
                    beta.primitive,
                    Some((scale.primitive, shift.primitive)),
                    options,
                )),
            },
        }
    }

    fn fused_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        scale: f64,
    ) -> FloatTensor<Self> {
        // The bias is a constant of the graph (it comes from masks): its primitive is used
        // and it receives no gradient.
        let bias = bias.map(|b| b.primitive);
        match AttentionNode
            .prepare::<C>([query.node.clone(), key.node.clone(), value.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (
                    prep.checkpoint(&query),
                    prep.checkpoint(&key),
                    prep.checkpoint(&value),
                    bias.clone(),
                    scale,
                );
                let out = B::fused_attention(
                    query.primitive,
                    key.primitive,
                    value.primitive,
                    bias,
                    scale,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_attention(
                query.primitive,
                key.primitive,
                value.primitive,
                bias,
                scale,
            )),
        }
    }

    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match bias {
            Some(bias) => match Conv2dNode
                .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = (
                        prep.checkpoint(&x),
                        prep.checkpoint(&weight),
                        prep.checkpoint(&bias),
                        options.clone(),
                    );
                    let out = B::fused_conv2d(
                        x.primitive,
                        weight.primitive,
                        Some(bias.primitive),
                        options,
                    );
                    prep.finish(state, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fused_conv2d(
                    x.primitive,
                    weight.primitive,
                    Some(bias.primitive),
                    options,
                )),
            },
            None => match Conv2dNoBiasNode
                .prepare::<C>([x.node.clone(), weight.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = (
                        prep.checkpoint(&x),
                        prep.checkpoint(&weight),
                        options.clone(),
                    );
                    let out = B::fused_conv2d(x.primitive, weight.primitive, None, options);
                    prep.finish(state, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fused_conv2d(
                    x.primitive,
                    weight.primitive,
                    None,
                    options,
                )),
            },
        }
    }
}
