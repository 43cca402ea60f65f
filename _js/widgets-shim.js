// Let the static widget renderer work offline beside MathJax 3.
// 1. Its icon fonts load from the book's own _static/widgets/ folder: the
//    renderer finds them next to its AMD module, so map that module there
//    (require.js reads a global `require` object as its configuration).
// 2. It typesets widget labels with MathJax 2's MathJax.Hub.Queue; MathJax 3
//    has no Hub, so give it a small one that calls MathJax 3's typesetter.
(function () {
  var here = document.currentScript.src;
  var widgets = here.replace(/widgets-shim\.js.*$/, "widgets");
  window.__jupyter_widgets_assets_path__ = widgets + "/";
  window.require = {paths: {"@jupyter-widgets/html-manager/dist": widgets}};
  document.addEventListener("DOMContentLoaded", function () {
    var mj = window.MathJax;
    if (!mj || mj.Hub) return;
    mj.Hub = {
      Queue: function (job) {
        var el = job && job[2];
        var ready = mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve();
        ready.then(function () {
          if (mj.typesetPromise) mj.typesetPromise(el ? [el] : undefined);
        });
      }
    };
  });
})();
