//! Every operator medgen knows, by name. The engine knows operators only through this list.

use crate::api::{OpSpec, Operator};

/// The operator registry.
pub struct Registry {
    ops: Vec<Box<dyn Operator>>,
}

impl Registry {
    /// All built-in operators.
    pub fn builtin() -> Registry {
        #[allow(unused_mut)]
        let mut ops: Vec<Box<dyn Operator>> = vec![
            Box::new(crate::source::files::SourceFiles),
            Box::new(crate::source::manifest::SourceManifest),
            Box::new(crate::sink::jsonl::SinkJsonl),
            Box::new(crate::source::dicom::SourceDicom),
            Box::new(crate::caption::template::CaptionTemplate),
            Box::new(crate::sink::report::SinkReport),
            Box::new(crate::source::prompts::SourcePrompts),
            Box::new(crate::latent::encode_text::LatentEncodeText),
        ];
        #[cfg(feature = "video")]
        {
            ops.push(Box::new(crate::video::probe::VideoProbe));
            ops.push(Box::new(crate::video::decode::VideoDecode));
            ops.push(Box::new(crate::video::cut::VideoCut));
            ops.push(Box::new(crate::video::encode::VideoEncode));
        }
        #[cfg(feature = "video")]
        ops.push(Box::new(crate::caption::vlm::CaptionVlm));
        #[cfg(feature = "video")]
        ops.push(Box::new(crate::sink::dataset::SinkDataset));
        ops.push(Box::new(crate::curate::metadata_filter::CurateMetadataFilter));
        ops.push(Box::new(crate::curate::rule::CurateRule));
        #[cfg(feature = "video")]
        {
            ops.push(Box::new(crate::curate::segment::CurateSegment));
            ops.push(Box::new(crate::curate::black_border::CurateBlackBorder));
            ops.push(Box::new(crate::curate::dedup::CurateDedup));
            ops.push(Box::new(crate::curate::camera_motion::CurateCameraMotion));
            ops.push(Box::new(crate::curate::category::CurateCategory));
        }
        #[cfg(feature = "video")]
        {
            ops.push(Box::new(crate::curate::ocr::CurateSubtitleOcr));
            ops.push(Box::new(crate::curate::quality::CurateTechnicalQuality));
            ops.push(Box::new(crate::curate::aesthetic::CurateAesthetic));
            ops.push(Box::new(crate::curate::deidentify::CurateDeidentify));
        }
        #[cfg(feature = "video")]
        {
            ops.push(Box::new(crate::latent::encode_video::LatentEncodeVideo));
            ops.push(Box::new(crate::latent::decode_video::LatentDecodeVideo));
            ops.push(Box::new(crate::train::flow_matching::TrainFlowMatching));
            ops.push(Box::new(crate::sample::t2v::SampleT2v));
            ops.push(Box::new(crate::eval::op::EvalVbench));
        }
        ops.push(Box::new(crate::eval::gate::EvalGate));
        Registry { ops }
    }

    pub fn get(&self, name: &str) -> Option<&dyn Operator> {
        self.ops.iter().find(|o| o.spec().name == name).map(|b| b.as_ref())
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.ops.iter().map(|o| o.spec().name).collect();
        v.sort();
        v
    }

    pub fn specs(&self) -> Vec<OpSpec> {
        let mut v: Vec<_> = self.ops.iter().map(|o| o.spec()).collect();
        v.sort_by_key(|s| s.name);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_staged() {
        let r = Registry::builtin();
        let names = r.names();
        let mut dedup = names.clone();
        dedup.dedup();
        assert_eq!(names, dedup);
        for n in names {
            let (stage, op) = n.split_once('.').expect("stage.name");
            assert!(!stage.is_empty() && !op.is_empty());
        }
    }
}
