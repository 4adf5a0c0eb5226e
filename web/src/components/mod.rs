pub mod compose;
pub mod curves;
pub mod evaluate;
pub mod file_list;
pub mod file_picker;
pub mod runs;
pub mod similarity;
